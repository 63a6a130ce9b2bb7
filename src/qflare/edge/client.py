"""HTTP client for the device side of the QFLARE protocol (httpx).

Server refusals come back as the same typed :mod:`qflare.errors` exceptions the server raised, with
the server's reason code; transport failures and 5xx answers raise :class:`ServerUnavailable`, which
the node loop retries with backoff.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from qflare import errors as e
from qflare.fl.serialize import sha256_hex
from qflare.server.gateway import DEVICE_HEADER

__all__ = ["DeviceClient", "ServerUnavailable", "error_from_response"]


class ServerUnavailable(e.QFlareError):
    """The server could not be reached or answered 5xx; worth retrying."""

    default_reason = "server_unavailable"


_BY_STATUS: dict[int, type[e.QFlareError]] = {
    400: e.MalformedPayload,
    401: e.AuthenticationError,
    403: e.PermissionDenied,
    404: e.NotFound,
    409: e.Conflict,
    413: e.PayloadTooLarge,
    422: e.InvalidInput,
}


def error_from_response(resp: httpx.Response) -> e.QFlareError:
    """Turn an error response into the matching typed exception, keeping the server's reason code."""
    reason, message = "http_error", resp.text[:500]
    try:
        body = resp.json()
        reason = str(body["error"]["reason"])
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if resp.status_code >= 500:
        return ServerUnavailable(f"server answered {resp.status_code}: {message}", reason=reason)
    cls = _BY_STATUS.get(resp.status_code, e.QFlareError)
    return cls(f"{resp.status_code} {reason}: {message}", reason=reason)


class DeviceClient:
    """The device's view of the server: heartbeat, task, model download, update upload.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8000``.
    device_id, token:
        The device's identity and the credential issued when it was registered.
    transport:
        An ``httpx`` transport, for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        device_id: str,
        token: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        self.device_id = device_id
        headers = {DEVICE_HEADER: device_id, "Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, content: bytes = b"", content_type: str = "application/octet-stream") -> bytes:
        try:
            resp = self._http.post(path, content=content, headers={"Content-Type": content_type})
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach server: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp.content

    def _post_json(self, path: str, content: bytes = b"") -> dict[str, Any]:
        raw = self._post(path, content)
        try:
            obj = json.loads(raw)
        except ValueError:
            raise e.MalformedPayload("server sent a response that is not JSON", reason="bad_response") from None
        if not isinstance(obj, dict):
            raise e.MalformedPayload("server sent a JSON response that is not an object", reason="bad_response")
        return obj

    def heartbeat(self) -> dict[str, Any]:
        return self._post_json("/v1/device/heartbeat")

    def task(self) -> dict[str, Any]:
        return self._post_json("/v1/device/task")

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        """Download a global model and check it against the SHA-256 the task announced."""
        blob = self._post(f"/v1/device/model/{version}")
        if sha256_hex(blob) != expected_sha256:
            raise e.InvalidInput(f"model v{version} does not match its announced SHA-256", reason="model_hash")
        return blob

    def upload_update(self, round_id: int, blob: bytes) -> dict[str, Any]:
        return self._post_json(f"/v1/device/rounds/{round_id}/update", blob)
