"""The operator's HTTP client for the server's ``/v1/admin`` API (used by ``qflare device``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from qflare.edge.client import ServerUnavailable, error_from_response
from qflare.environment import environment
from qflare.errors import ConfigError

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_TOKEN_FILE = Path(".qflare/admin_token")


def resolve_operator_token(explicit: str | None, token_file: Path = DEFAULT_TOKEN_FILE) -> str:
    token = explicit or environment().admin_token
    if token:
        return token
    if token_file.exists():
        return token_file.read_text().strip()
    raise ConfigError("no operator token: pass --admin-token, set QFLARE_ADMIN_TOKEN, or run where "
                      f"{token_file} exists", reason="operator_token")


class OperatorClient:
    def __init__(self, server: str, token: str, *, verify: Any = True, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {token}"}, verify=verify,
                                  timeout=timeout)

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, json: Any = None) -> Any:
        return self.raw(method, path, json).json()

    def raw(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> httpx.Response:
        """The answer itself (for bytes and headers); errors raised as for :meth:`request`."""
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach {self._http.base_url}: {exc}") from None
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp
