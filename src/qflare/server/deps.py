"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request

from qflare.errors import AuthenticationError, PermissionDenied
from qflare.server.openapi import ENVELOPE_MEDIA_TYPE
from qflare.server.ratelimit import RateLimits, build_rate_limits, source_of
from qflare.server.state import ServerState


async def get_state(request: Request) -> ServerState:
    # async: FastAPI runs a plain ``def`` dependency in the thread pool, so every request first waited for
    # a free worker thread before its route could read the body. Under upload load (every thread busy
    # opening and storing 4 MB updates) uvicorn stops reading a waiting request after 64 KiB, and the
    # transport's body-chunk timeout (server.body_chunk_timeout_seconds) then cut it: a burst of 194
    # "disconnected during POST .../update" with 500 devices (benchmarks/load_devices.py).
    state: ServerState = request.app.state.qflare
    return state


State = Annotated[ServerState, Depends(get_state)]

ID_MAX = 2**63 - 1
"""The largest round id or model version a path may name: the databases' 64-bit signed integer (a larger one
reached SQLite and answered 500, ``OverflowError``; found by schemathesis)."""
RoundId = Annotated[int, Path(ge=0, le=ID_MAX, description="a round id")]
ModelVersion = Annotated[int, Path(ge=0, le=ID_MAX, description="a global model's version")]


def rate_limits(request: Request) -> RateLimits:
    """The app's limiters, built from the config at first use."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    if limits is None:
        state: ServerState = request.app.state.qflare
        limits = build_rate_limits(state.config.server.rate_limits)
        request.app.state.rate_limits = limits
    return limits


def require_operator(request: Request, state: State) -> None:
    # Wrong tokens are limited per source (guessing); a source over its budget is refused before the compare.
    limiter = rate_limits(request).operator_failures
    source = source_of(request.client)
    if limiter is not None:
        limiter.check(source)
    if request.headers.get("content-type", "").startswith(ENVELOPE_MEDIA_TYPE):
        # A device's credential (a signed envelope) never opens an operator route, whatever it holds.
        state.repo.add_event("request_rejected", now=state.clock(), reason="device_credential_on_operator_route",
                             detail=f"{request.method} {request.url.path} from {source}")
        raise PermissionDenied("a device credential cannot be used on an operator route",
                               reason="device_credential_on_operator_route")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), state.admin_token.encode()):
        if limiter is not None:
            limiter.charge(source)
        # Recorded (the server's own record): bounded by the bucket above and the refusal retention.
        state.repo.add_event("request_rejected", now=state.clock(), reason="operator_auth",
                             detail=f"{request.method} {request.url.path} from {source}")
        raise AuthenticationError("operator credential missing or wrong", reason="operator_auth")


Operator = Annotated[None, Depends(require_operator)]
