"""What the OpenAPI schema says beyond what FastAPI infers: the envelope request bodies of the device
routes and the error responses of every route (so fuzzers and client generators can use the schema)."""

from __future__ import annotations

from typing import Any

from qflare.server.errors import SEALED_MEDIA_TYPE
from qflare.server.schemas import ErrorResponse

ENVELOPE_MEDIA_TYPE = "application/vnd.qflare.envelope"

_BINARY = {"type": "string", "format": "binary"}

ENVELOPE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a signed, encrypted request envelope (docs/protocol.md)",
        "content": {ENVELOPE_MEDIA_TYPE: {"schema": _BINARY}},
    }
}
"""``openapi_extra`` of a device route: the body FastAPI cannot see (the route reads it raw)."""

_ERRORS: dict[int, str] = {
    400: "malformed request or input",
    401: "not authenticated",
    403: "authenticated but not allowed",
    404: "no such resource",
    409: "conflict (e.g. duplicate_update: already accepted)",
    413: "body too large",
    422: "invalid request or rejected update",
    429: "rate limited (see Retry-After)",
    500: "server error",
    503: "temporarily unavailable (see Retry-After)",
}


def error_responses(*, sealed: bool = False) -> dict[int | str, dict[str, Any]]:
    """The 4xx/5xx responses, each with the error JSON; ``sealed`` adds the sealed form of a device refusal."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, text in _ERRORS.items():
        entry: dict[str, Any] = {"model": ErrorResponse, "description": text}
        if sealed:
            entry["content"] = {SEALED_MEDIA_TYPE: {"schema": _BINARY}}
        out[status] = entry
    return out
