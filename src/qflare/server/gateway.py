"""The device gateway: every device request is a post-quantum envelope, checked cheapest first.

Order (``docs/protocol.md``): size limit (while streaming) -> envelope structure and version ->
method, path and round bound by the signed header -> device known -> not revoked -> key source allowed
for this device -> timestamp window -> nonce never seen -> composite signature -> nonce recorded
(atomically) -> decapsulation and decryption (by the :class:`~qflare.server.keys.RequestOpener`, which
holds the KEM private key). A refusal raises a typed error with a reason code and changes no state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from qflare.crypto.envelope import Envelope, check_timestamp, parse_envelope, verify_envelope_signature
from qflare.crypto.signing import VerifyKey
from qflare.errors import MalformedPayload, PayloadTooLarge, PermissionDenied, QKDError, ReplayDetected, UnknownDevice
from qflare.server.keys import RequestOpener, Sealer
from qflare.server.storage import DeviceRecord, Repository

RESPONSE_MEDIA_TYPE = "application/vnd.qflare.response"
# last_seen is a liveness hint: one write per device every few seconds is enough.
TOUCH_INTERVAL_SECONDS = 2.0

QKDKeyLookup = Callable[[str, tuple[str, ...]], bytes]


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it exceeds ``limit`` bytes (never buffering more)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise MalformedPayload("invalid Content-Length", reason="bad_content_length") from None
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit}")
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
    """An authenticated device request and the sealer for its one response.

    ``payload`` is the decrypted request, except for an update upload behind an enclave: then it is
    the still-sealed envelope, for the aggregation backend to open (with ``key_sources`` and
    ``extra_secret``).
    """

    device_id: str
    payload: bytes
    envelope: Envelope
    sealer: Sealer
    key_sources: tuple[str, ...]
    extra_secret: bytes | None = field(default=None, repr=False)

    def seal(self, response: bytes) -> bytes:
        return self.sealer.seal(response)


class _DeviceKeyCache:
    """Parsed device public keys by (device, fingerprint); revocation is always read from storage."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], VerifyKey] = {}
        self._lock = threading.Lock()

    def get(self, device: DeviceRecord) -> VerifyKey:
        k = (device.device_id, device.fingerprint)
        with self._lock:
            key = self._keys.get(k)
        if key is None:
            key = VerifyKey.from_bytes(device.public_key)
            with self._lock:
                self._keys[k] = key
        return key


class DeviceGateway:
    """Authenticates device requests (see the module docstring for the order of checks).

    Parameters
    ----------
    repo:
        Device registry and nonce store.
    opener:
        Decapsulates and decrypts (holds the server KEM private key).
    window_seconds:
        Accepted clock skew, either way.
    qkd_lookup:
        Fetches the QKD key for ``(device_id, key_ids)`` from the server's KME; ``None`` when the
        server has no QKD link (requests naming QKD keys are then refused).
    """

    def __init__(
        self,
        repo: Repository,
        opener: RequestOpener,
        *,
        window_seconds: float = 120.0,
        qkd_lookup: QKDKeyLookup | None = None,
    ) -> None:
        self.repo = repo
        self.opener = opener
        self.window = window_seconds
        self.qkd_lookup = qkd_lookup
        self._keys = _DeviceKeyCache()
        self._touched: dict[str, float] = {}

    def authenticate(
        self,
        envelope_bytes: bytes,
        *,
        method: str,
        path: str,
        round_id: int | None,
        now: float,
        max_size: int,
        update: bool = False,
    ) -> DeviceCall:
        """Run every check; ``update`` marks an upload, which an enclave opener leaves sealed."""
        env = parse_envelope(envelope_bytes, max_size=max_size)
        if env.method != method or env.path != path:
            raise PermissionDenied(
                f"the request was signed for {env.method} {env.path}, not {method} {path}", reason="path_mismatch"
            )
        if env.round_id != round_id:
            raise PermissionDenied(
                f"the request was signed for round {env.round_id}, not {round_id}", reason="round_mismatch"
            )
        device = self.repo.get_device(env.device_id)
        if device is None:
            raise UnknownDevice(f"device {env.device_id!r} is not enrolled")
        if device.revoked:
            raise PermissionDenied(f"device {env.device_id!r} is revoked", reason="device_revoked")
        if env.key_source.value != device.key_source:
            raise PermissionDenied(
                f"device {device.device_id!r} must use key source {device.key_source}, not {env.key_source.value}",
                reason="key_source_not_allowed",
            )
        check_timestamp(env, now, self.window)
        nonce = env.nonce.hex()
        if self.repo.nonce_seen(device.device_id, nonce):
            raise ReplayDetected("this request was seen before")
        verify_envelope_signature(env, self._keys.get(device))
        # The insert is the atomic step: of two concurrent copies of one request, exactly one passes.
        self.repo.record_nonce(device.device_id, nonce, expires_at=env.timestamp_ms / 1000 + self.window + 1)
        extra = self._qkd_key(env)
        sources = (device.key_source,)
        sealer: Sealer
        if update and not self.opener.opens_updates:
            payload, sealer = env.raw, self.opener.update_sealer(env)
        else:
            payload, sealer = self.opener.open(env, allowed_key_sources=sources, extra_secret=extra)
        self._touch(device.device_id, now)
        return DeviceCall(device_id=device.device_id, payload=payload, envelope=env, sealer=sealer,
                          key_sources=sources, extra_secret=extra)

    def _touch(self, device_id: str, now: float) -> None:
        # last_seen is a liveness hint: skip the write when this process wrote it moments ago.
        if now - self._touched.get(device_id, float("-inf")) >= TOUCH_INTERVAL_SECONDS:
            self._touched[device_id] = now
            self.repo.touch_device(device_id, now=now, min_interval=TOUCH_INTERVAL_SECONDS)

    def _qkd_key(self, env: Envelope) -> bytes | None:
        if not env.key_ids:
            return None
        if self.qkd_lookup is None:
            raise QKDError("this server has no QKD link configured", reason="qkd_not_configured")
        return self.qkd_lookup(env.device_id, env.key_ids)
