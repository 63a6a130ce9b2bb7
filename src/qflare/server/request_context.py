"""A request id for every HTTP request: the caller's ``X-Request-ID`` (if sane) or a fresh one, bound for
the logs (:mod:`qflare.logs`) and echoed in the answer's ``X-Request-ID``."""

from __future__ import annotations

import re
import secrets

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qflare.logs import bind_device, bind_request

__all__ = ["RequestIdMiddleware", "install_request_ids"]

_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    """Plain ASGI (not ``@app.middleware("http")``, whose ``BaseHTTPMiddleware`` runs every request in a task
    group with memory streams: a share of the server's event-loop time at 100 clients, docs/benchmarks.md)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _SANE.fullmatch(given) else secrets.token_hex(8)
        bind_request(rid)
        bind_device(None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_request_ids(app: FastAPI) -> None:
    app.add_middleware(RequestIdMiddleware)
