"""A request id for every HTTP request: the caller's ``X-Request-ID`` (if sane) or a fresh one, bound for
the logs (:mod:`qflare.logs`) and echoed in the answer's ``X-Request-ID``."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from qflare.logs import bind_device, bind_request

__all__ = ["install_request_ids"]

_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def install_request_ids(app: FastAPI) -> None:
    @app.middleware("http")
    async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.headers.get("x-request-id", "")
        rid = given if _SANE.fullmatch(given) else secrets.token_hex(8)
        bind_request(rid)
        bind_device(None)
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response
