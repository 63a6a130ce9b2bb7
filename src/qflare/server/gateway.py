"""The device gateway: every device request is a post-quantum envelope, checked cheapest first.

Order (``docs/protocol.md`` section "Server checks"): size limit (while streaming) -> envelope
structure and version -> method and raw request target (path and query, as sent) and round bound by the
signed header -> timestamp window -> composite signature under the device's enrolled key (under a dummy
key for an unknown device, so that unknown, badly signed and revoked-but-badly-signed requests get one
answer, ``401 unauthenticated``, in the same time) -> not revoked -> key source allowed -> nonce and
KEM ciphertext never seen (recorded atomically, both or neither, with the device's ``last_seen_at`` in
the same transaction) -> decapsulation and decryption (by the
:class:`~qflare.server.keys.RequestOpener`, which holds the KEM private key; for an upload behind an
enclave, later, inside the enclave).

The device's row is read once per request (for its key, status and key source) and handed to the route
in the :class:`DeviceCall`, so the route's work does not read it again.

A refusal raises a typed error with a reason code and changes no state, with one documented exception:
a validly signed request's nonce stays used (and its device's ``last_seen_at`` set) when its decryption
then fails. Only the holder of the device key can cause that, and recording first is what guarantees
that no copy of a request is ever decrypted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from qflare.crypto import SigningKey
from qflare.crypto.envelope import Envelope, check_timestamp, parse_envelope, verify_envelope_signature
from qflare.crypto.signing import VerifyKey
from qflare.errors import (
    AuthenticationError,
    MalformedPayload,
    PayloadTooLarge,
    PermissionDenied,
    QKDError,
    Unauthenticated,
)
from qflare.fl.port import PlainUpdate, SealedUpdate
from qflare.server.errors import SEALED_MEDIA_TYPE
from qflare.server.keys import RequestOpener, Sealer
from qflare.server.storage import DeviceRecord, Repository

if TYPE_CHECKING:
    from qflare.server.ledger import AuditLog

RESPONSE_MEDIA_TYPE = SEALED_MEDIA_TYPE
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


def request_target(request: Request) -> str:
    """The request target exactly as the client sent it: raw (percent-encoded) path, then ``?query`` if any.

    This is what a device signs in the header's ``path`` field (``docs/protocol.md``).
    """
    raw = request.scope.get("raw_path") or request.url.path.encode("ascii", "replace")
    target = bytes(raw).decode("latin-1")
    query = request.scope.get("query_string") or b""
    return f"{target}?{bytes(query).decode('latin-1')}" if query else target


@dataclass(frozen=True)
class OpenedRequest:
    """A small request decrypted by the opener: its plaintext payload."""

    payload: bytes = field(repr=False)


DeviceBody = OpenedRequest | PlainUpdate | SealedUpdate
"""What an authenticated request carries: a small decrypted request, a decrypted update (in process),
or an update still sealed for the enclave. Each consumer accepts exactly the type it can handle."""


@dataclass(frozen=True)
class DeviceCall:
    """An authenticated device request and the sealer for its one response.

    ``device`` is the device's row as the gateway read it to authenticate the request (the route's work
    uses it instead of reading it again)."""

    device_id: str
    body: DeviceBody
    envelope: Envelope
    sealer: Sealer
    device: DeviceRecord | None = None

    def seal(self, response: bytes) -> bytes:
        return self.sealer.seal(response)

    @property
    def payload(self) -> bytes:
        """The decrypted payload of a small request (an upload's body is an update, not a payload)."""
        if not isinstance(self.body, OpenedRequest):
            raise TypeError(f"this call carries a {type(self.body).__name__}, not a small request")
        return self.body.payload


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
        self.ledger: AuditLog | None = None  # set by build_state: key-source refusals are logged
        self._keys = _DeviceKeyCache()
        self._touched: dict[str, float] = {}
        # Stands in for an unknown device's key: nobody holds its private half (it is discarded).
        self._dummy_key: VerifyKey = SigningKey.generate().public_key()

    def authenticate(
        self,
        envelope_bytes: bytes,
        *,
        method: str,
        target: str,
        round_id: int | None,
        now: float,
        max_size: int,
        update: bool = False,
    ) -> DeviceCall:
        """Run every check; ``update`` marks an upload (its body becomes a Plain- or SealedUpdate)."""
        env = parse_envelope(envelope_bytes, max_size=max_size)
        if env.method != method or env.path != target:
            raise PermissionDenied(
                f"the request was signed for {env.method} {env.path}, not {method} {target}", reason="path_mismatch"
            )
        if env.round_id != round_id:
            raise PermissionDenied(
                f"the request was signed for round {env.round_id}, not {round_id}", reason="round_mismatch"
            )
        check_timestamp(env, now, self.window)
        device = self._authenticate_signature(env)
        if device.revoked:
            raise PermissionDenied(f"device {env.device_id!r} is revoked", reason="device_revoked")
        if env.key_source.value != device.key_source:
            if self.ledger is not None:
                self.ledger.key_source_refused(env.key_source.value, "key_source_not_allowed", device.device_id)
            raise PermissionDenied(
                f"device {device.device_id!r} must use key source {device.key_source}, not {env.key_source.value}",
                reason="key_source_not_allowed",
            )
        # The insert is the atomic step: of two concurrent copies of one request, exactly one passes; a
        # KEM ciphertext is refused a second time too, even under a fresh nonce (one request, one key).
        kem_id = hashlib.sha256(env.kem_ciphertext).hexdigest() if env.kem_ciphertext else None
        # last_seen is a liveness hint, written in the nonce's transaction (one commit a request), and
        # skipped when this process wrote it moments ago.
        seen = now - self._touched.get(device.device_id, float("-inf")) >= TOUCH_INTERVAL_SECONDS
        self.repo.record_request(device.device_id, env.nonce.hex(), kem_id,
                                 expires_at=env.timestamp_ms / 1000 + self.window + 1,
                                 seen_at=now if seen else None, seen_interval=TOUCH_INTERVAL_SECONDS)
        if seen:
            self._touched[device.device_id] = now
        try:
            extra = self._qkd_key(env)
        except QKDError as exc:
            # The server's KME could not deliver the device's QKD key: the link failed this request.
            if self.ledger is not None:
                self.ledger.qkd_link_aborted(f"{device.device_id}->server", exc.reason)
                self.ledger.key_source_refused(env.key_source.value, exc.reason, device.device_id)
            raise
        sources = (device.key_source,)
        body: DeviceBody
        sealer: Sealer
        if update and not self.opener.opens_updates:
            body, sealer = SealedUpdate(env.raw, sources, extra), self.opener.update_sealer(env)
        else:
            payload, sealer = self.opener.open(env, allowed_key_sources=sources, extra_secret=extra)
            body = PlainUpdate(payload) if update else OpenedRequest(payload)
        # The call keeps the envelope's header only: an upload's ciphertext (4 MB) is not held while its
        # update is validated and stored (the body, decrypted or still sealed, is in ``body``).
        header_only = dataclasses.replace(env, body=memoryview(b""), raw=b"") if update else env
        return DeviceCall(device_id=device.device_id, body=body, envelope=header_only, sealer=sealer, device=device)

    def _authenticate_signature(self, env: Envelope) -> DeviceRecord:
        """The enrolled device whose key signed ``env``; otherwise one indistinguishable refusal.

        An unknown device is checked against a dummy key, so the answer and the work are the same for an
        unknown device, a bad signature and a revoked device's bad signature; the precise reason goes
        only into the server's record (:attr:`Unauthenticated.cause`).
        """
        device = self.repo.get_device(env.device_id)
        key = self._keys.get(device) if device is not None else self._dummy_key
        try:
            verify_envelope_signature(env, key)
        except AuthenticationError as exc:
            cause = "unknown_device" if device is None else exc.reason
            raise Unauthenticated(cause=cause) from None
        if device is None:  # pragma: no cover - a dummy key's signature cannot verify
            raise Unauthenticated(cause="unknown_device")
        return device

    def _qkd_key(self, env: Envelope) -> bytes | None:
        if not env.key_ids:
            return None
        if self.qkd_lookup is None:
            raise QKDError("this server has no QKD link configured", reason="qkd_not_configured")
        return self.qkd_lookup(env.device_id, env.key_ids)
