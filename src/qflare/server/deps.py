"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from qflare.errors import AuthenticationError
from qflare.server.state import ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.qflare
    return state


State = Annotated[ServerState, Depends(get_state)]


def require_operator(request: Request, state: State) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), state.admin_token.encode()):
        raise AuthenticationError("operator credential missing or wrong", reason="operator_auth")


Operator = Annotated[None, Depends(require_operator)]
