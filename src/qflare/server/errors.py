"""The one table that maps QFLARE errors to HTTP status codes, and the handlers that apply it."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qflare import errors as e

log = logging.getLogger("qflare.server")

# Most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[e.QFlareError], int], ...] = (
    (e.MalformedPayload, 400),
    (e.ModelSpecMismatch, 422),
    (e.NonFiniteValues, 422),
    (e.UpdateRejected, 422),
    (e.InvalidInput, 400),
    (e.PayloadTooLarge, 413),
    (e.RateLimited, 429),
    (e.AuthenticationError, 401),
    (e.PermissionDenied, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.EnclaveError, 503),
    (e.QKDError, 503),
    (e.AttestationError, 502),
    (e.ConfigError, 500),
)


SEALED_MEDIA_TYPE = "application/vnd.qflare.response"


class SealedRefusal(Exception):
    """A refusal to an authenticated request, answered sealed under that request's response key.

    ``sealed`` is ``None`` when the response key is no longer to be had (e.g. the enclave never opened
    the request): the refusal then goes back as plain JSON, like a gateway refusal.
    """

    def __init__(self, error: e.QFlareError, sealed: bytes | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.sealed = sealed

    @classmethod
    def for_call(cls, error: e.QFlareError, seal: Callable[[bytes], bytes], body: dict[str, Any]) -> SealedRefusal:
        try:
            sealed: bytes | None = seal(json.dumps(body, separators=(",", ":")).encode())
        except e.QFlareError:
            sealed = None
        return cls(error, sealed)


def status_for(exc: e.QFlareError) -> int:
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(reason: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"reason": reason, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SealedRefusal)
    async def _sealed(request: Request, exc: SealedRefusal) -> Response:
        if exc.sealed is None:
            return await _qflare(request, exc.error)
        status = status_for(exc.error)
        headers = {"Retry-After": "1"} if status == 503 else None
        return Response(exc.sealed, status_code=status, media_type=SEALED_MEDIA_TYPE, headers=headers)

    @app.exception_handler(e.QFlareError)
    async def _qflare(_: Request, exc: e.QFlareError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("server error %s: %s", exc.reason, exc.message)
        headers = {"Retry-After": "1"} if status == 503 else None
        if isinstance(exc, e.RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse(error_body(exc.reason, exc.message), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        reason = "malformed_json" if any(x.get("type") == "json_invalid" for x in errs) else "invalid_request"
        detail = "; ".join(
            f"{'.'.join(str(p) for p in x.get('loc', ()))}: {x.get('msg', '')}" for x in errs
        )
        status = 400 if reason == "malformed_json" else 422
        return JSONResponse(error_body(reason, detail[:1000]), status_code=status)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # Nobody is left to answer; one line instead of uvicorn's traceback for an unhandled exception.
        client = f"{request.client.host}:{request.client.port}" if request.client else "?"
        log.info("client %s disconnected during %s %s", client, request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(reason, str(exc.detail)), status_code=exc.status_code)
