"""The device gateway: reads a device request within its size limit and authenticates the sender.

Every device route goes through :meth:`DeviceGateway.authenticate`, which returns a :class:`DeviceCall`
(who is calling, what they sent, and how to wrap the answer). Checks run cheapest first: size, device
known, device not revoked, credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from qflare.errors import MalformedPayload, PayloadTooLarge, PermissionDenied, UnknownDevice
from qflare.errors import AuthenticationError
from qflare.server.storage import Repository

DEVICE_HEADER = "X-QFLARE-Device"
# Compared against when the device is unknown, so that timing does not tell known from unknown ids.
_DUMMY_HASH = hashlib.sha256(b"qflare-dummy-token").hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it exceeds ``limit`` bytes (never buffering more)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body of {int(declared)} bytes exceeds the limit of {limit}")
        except ValueError:
            raise MalformedPayload("invalid Content-Length", reason="bad_content_length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class DeviceCall:
    """An authenticated device request."""

    device_id: str
    payload: bytes
    wrap_response: Callable[[bytes], bytes]
    media_type: str


def _identity(data: bytes) -> bytes:
    return data


class DeviceGateway:
    """Bearer-token device authentication (each device holds a random token issued at registration)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def claimed_device(self, request: Request) -> str | None:
        return request.headers.get(DEVICE_HEADER)

    def authenticate(self, request: Request, body: bytes, *, now: float, json_response: bool) -> DeviceCall:
        device_id = request.headers.get(DEVICE_HEADER)
        if not device_id:
            raise AuthenticationError(f"missing {DEVICE_HEADER} header", reason="missing_device_id")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("missing bearer credential", reason="missing_credential")
        device = self.repo.get_device(device_id)
        expected = device.token_hash if device is not None and device.token_hash else _DUMMY_HASH
        ok = hmac.compare_digest(hash_token(token), expected)
        if device is None:
            raise UnknownDevice(f"device {device_id!r} is not registered")
        if device.revoked:
            raise PermissionDenied(f"device {device_id!r} is revoked", reason="device_revoked")
        if not ok:
            raise AuthenticationError("credential does not match", reason="bad_credential")
        self.repo.touch_device(device_id, now=now)
        media = "application/json" if json_response else "application/octet-stream"
        return DeviceCall(device_id=device_id, payload=body, wrap_response=_identity, media_type=media)
