"""The request envelope: one request, one key (suite 1). Wire format in ``docs/protocol.md``.

Device side, one call::

    envelope_bytes, opener = seal_request(device_key, server_kem_public, device_id="dev-1",
                                          method="POST", path="/v1/updates", round_id=7,
                                          payload=update_bytes, now=time.time())
    ...send envelope_bytes, receive response_bytes...
    reply = opener.open(response_bytes)

Server side, cheapest check first (the server adds its own registry and nonce checks)::

    env = parse_envelope(data, max_size=limit)           # PayloadTooLarge, MalformedPayload
    # env.method / env.path / env.round_id equal the HTTP request's?  (server)
    # device known and not revoked?                       (server: UnknownDevice, PermissionDenied)
    check_key_source(env, allowed)                        # PermissionDenied (decrypt repeats it)
    check_timestamp(env, time.time(), window_s=300)       # StaleRequest
    # (env.device_id, env.nonce) never seen               (server: ReplayDetected; record after
    #                                                       the signature passes, atomically)
    verify_envelope_signature(env, device_public_key)     # InvalidSignature
    payload, sealer = decrypt_envelope(env, server_kem_private, allowed_key_sources=allowed,
                                       extra_secret=qkd_key_or_none)   # DecryptionFailed
    response_bytes = sealer.seal(reply_payload)

``decrypt_envelope`` needs only the envelope bytes (``env.raw``) and the KEM private key, so an
enclave process can run it while the web process does the cheaper checks.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

from qflare.crypto._aead import OVERHEAD as AEAD_OVERHEAD
from qflare.crypto._aead import Aead
from qflare.crypto._composite import SIGNATURE_SIZE, SigningKey, VerifyKey
from qflare.crypto._random import random_bytes
from qflare.crypto._xwing import XWingPrivateKey, XWingPublicKey
from qflare.crypto.contexts import SigningContext
from qflare.crypto.encoding import (
    MAX_HEADER_SIZE,
    NONCE_SIZE,
    SUITE_V1,
    VERSION,
    KeySource,
    RequestHeader,
)
from qflare.crypto.schedule import MAX_QKD_KEY_SIZE, MIN_QKD_KEY_SIZE, RequestKeys, derive_request_keys
from qflare.errors import (
    CryptoError,
    DecryptionFailed,
    MalformedPayload,
    PayloadTooLarge,
    PermissionDenied,
    QKDError,
    StaleRequest,
)

__all__ = [
    "RESPONSE_MAGIC",
    "RESPONSE_OVERHEAD",
    "Envelope",
    "KeySource",
    "ResponseOpener",
    "ResponseSealer",
    "check_key_source",
    "check_timestamp",
    "decrypt_envelope",
    "parse_envelope",
    "seal_request",
    "verify_envelope_signature",
]

RESPONSE_MAGIC: Final = b"QFRS"
_RESPONSE_PREFIX: Final = RESPONSE_MAGIC + struct.pack(">HH", VERSION, SUITE_V1)
RESPONSE_OVERHEAD: Final = len(_RESPONSE_PREFIX) + AEAD_OVERHEAD
"""Bytes a response adds to its payload: 8-byte prefix + 12-byte nonce + 16-byte tag."""
_FRAME_OVERHEAD: Final = 4 + 4 + 2


def _signed_message(header_bytes: bytes, body: bytes | memoryview) -> bytes:
    return header_bytes + hashlib.sha256(body).digest()


def _response_aad(transcript_hash: bytes) -> bytes:
    return _RESPONSE_PREFIX + transcript_hash


def _timestamp_ms(now: float) -> int:
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise TypeError("now must be Unix time in seconds (int or float)")
    return int(round(now * 1000))


# --------------------------------------------------------------------------------------- device side


class ResponseOpener:
    """Opens the server's response to one sealed request (holds that request's ``k_resp``).

    Returned by :func:`seal_request`; not constructed directly.
    """

    __slots__ = ("_aead", "_th")

    def __init__(self, keys: RequestKeys) -> None:
        self._aead = Aead(keys.k_resp)
        self._th = keys.transcript_hash

    @property
    def request_hash(self) -> bytes:
        """SHA-256 of the request header this opener belongs to."""
        return self._th

    def open(self, response: bytes) -> bytes:
        """Verify and decrypt a response; returns its payload.

        Raises
        ------
        MalformedPayload
            Not a v1 suite-1 response (``reason="malformed_response"``).
        DecryptionFailed
            Tampered, truncated, or a response to another request.
        """
        response = bytes(response)
        if len(response) < RESPONSE_OVERHEAD or response[:4] != RESPONSE_MAGIC:
            raise MalformedPayload("not a QFLARE response", reason="malformed_response")
        if response[: len(_RESPONSE_PREFIX)] != _RESPONSE_PREFIX:
            raise MalformedPayload("response version/suite not accepted", reason="unsupported_version")
        return self._aead.decrypt(response[len(_RESPONSE_PREFIX) :], _response_aad(self._th))

    def __repr__(self) -> str:
        return f"ResponseOpener(request={self._th.hex()[:16]}...)"


def seal_request(
    device_key: SigningKey,
    server_kem_public: XWingPublicKey,
    *,
    device_id: str,
    method: str,
    path: str,
    round_id: str | int | None,
    payload: bytes,
    now: float,
    key_source: KeySource | str = KeySource.MLKEM,
    qkd_key: bytes | None = None,
    key_ids: Sequence[str] = (),
) -> tuple[bytes, ResponseOpener]:
    """Build a signed, encrypted request envelope and the opener for its response.

    Parameters
    ----------
    device_key:
        The device's composite identity key (signs the request).
    server_kem_public:
        The server/enclave X-Wing public key (unused for ``key_source="qkd"``).
    device_id, method, path, round_id:
        Header fields: printable ASCII (``device_id`` and string round ids 1-128 chars, ``method``
        ``[A-Z]{1,16}``, ``path`` starting with ``/``, at most 2048 chars); ``round_id`` may be a
        non-negative int, a string, or ``None``.
    payload:
        The request body, encrypted under ``k_req``.
    now:
        Current Unix time in seconds; stored in milliseconds.
    key_source:
        ``"mlkem"`` (default), ``"qkd"`` or ``"hybrid"``.
    qkd_key, key_ids:
        The QKD key (32-1024 bytes) and its key ids, required for ``qkd``/``hybrid``, forbidden for
        ``mlkem``.

    Returns
    -------
    tuple[bytes, ResponseOpener]
        The envelope bytes and the opener for the server's response.
    """
    if not isinstance(device_key, SigningKey):
        raise TypeError("device_key must be a SigningKey")
    if not isinstance(server_kem_public, XWingPublicKey):
        raise TypeError("server_kem_public must be an XWingPublicKey")
    key_source = KeySource(key_source)
    uses_kem = key_source in (KeySource.MLKEM, KeySource.HYBRID)
    uses_qkd = key_source in (KeySource.QKD, KeySource.HYBRID)
    if uses_qkd:
        if qkd_key is None or not key_ids:
            raise ValueError(f"key_source {key_source.value} needs qkd_key and key_ids")
        qkd_key = bytes(qkd_key)
        if not MIN_QKD_KEY_SIZE <= len(qkd_key) <= MAX_QKD_KEY_SIZE:
            raise ValueError("qkd_key must be 32 to 1024 bytes")
    elif qkd_key is not None or key_ids:
        raise ValueError("key_source mlkem takes no qkd_key or key_ids")
    if isinstance(key_ids, str):
        raise TypeError("key_ids must be a sequence of str")

    nonce = random_bytes(NONCE_SIZE)
    kem_secret: bytes | None = None
    kem_ct = b""
    if uses_kem:
        kem_secret, kem_ct = server_kem_public.encapsulate()
    header = RequestHeader(
        key_source=key_source,
        timestamp_ms=_timestamp_ms(now),
        nonce=nonce,
        device_id=device_id,
        method=method,
        path=path,
        round_id=round_id,
        key_ids=tuple(key_ids),
        kem_ciphertext=kem_ct,
    )
    header_bytes = header.encode()
    keys = derive_request_keys(header_bytes, key_source, kem_secret=kem_secret, qkd_key=qkd_key)
    body = Aead(keys.k_req).encrypt(bytes(payload), header_bytes)
    signature = device_key.sign(_signed_message(header_bytes, body), SigningContext.REQUEST)
    envelope = (
        struct.pack(">I", len(header_bytes))
        + header_bytes
        + struct.pack(">I", len(body))
        + body
        + struct.pack(">H", len(signature))
        + signature
    )
    return envelope, ResponseOpener(keys)


# --------------------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class Envelope:
    """A structurally valid request envelope. Nothing in it is authenticated yet.

    Produced by :func:`parse_envelope`. ``raw`` is the exact wire bytes (hand it to another process
    and re-parse there).
    """

    header: RequestHeader
    header_bytes: bytes = field(repr=False)
    body: bytes | memoryview = field(repr=False)  # a view into ``raw``: a 4 MB upload is not copied to parse it
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def version(self) -> int:
        """Envelope version (1)."""
        return self.header.version

    @property
    def suite(self) -> int:
        """Algorithm suite id (1)."""
        return self.header.suite

    @property
    def device_id(self) -> str:
        """Claimed device id (authenticated only after the signature check)."""
        return self.header.device_id

    @property
    def method(self) -> str:
        """HTTP method the device signed; compare with the actual request."""
        return self.header.method

    @property
    def path(self) -> str:
        """HTTP path the device signed; compare with the actual request."""
        return self.header.path

    @property
    def round_id(self) -> str | int | None:
        """Round id, or ``None``."""
        return self.header.round_id

    @property
    def timestamp_ms(self) -> int:
        """Device timestamp, Unix milliseconds."""
        return self.header.timestamp_ms

    @property
    def nonce(self) -> bytes:
        """16 random bytes; the replay key is ``(device_id, nonce)``."""
        return self.header.nonce

    @property
    def key_source(self) -> KeySource:
        """``mlkem``, ``qkd`` or ``hybrid``."""
        return self.header.key_source

    @property
    def key_ids(self) -> tuple[str, ...]:
        """QKD key ids (empty for ``mlkem``)."""
        return self.header.key_ids

    @property
    def kem_ciphertext(self) -> bytes:
        """The X-Wing ciphertext (empty for ``qkd``)."""
        return self.header.kem_ciphertext

    @property
    def header_hash(self) -> bytes:
        """SHA-256 of the canonical header: the transcript hash, unique per request."""
        return hashlib.sha256(self.header_bytes).digest()


def parse_envelope(data: bytes, *, max_size: int, accepted_suites: Sequence[int] = (SUITE_V1,)) -> Envelope:
    """Check size and structure only (no cryptography).

    Raises
    ------
    PayloadTooLarge
        ``len(data) > max_size``.
    MalformedPayload
        Bad framing or header (``reason`` ``"malformed_envelope"``, ``"unsupported_version"``,
        ``"unsupported_suite"``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("data must be bytes")
    if len(data) > max_size:
        raise PayloadTooLarge(f"envelope of {len(data)} bytes exceeds {max_size}", reason="payload_too_large")
    data = bytes(data)  # no copy for bytes (the server's case)
    view = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(data):
            raise MalformedPayload("truncated envelope", reason="malformed_envelope")
        out = view[pos : pos + n]
        pos += n
        return out

    (header_len,) = struct.unpack(">I", take(4))
    if header_len > MAX_HEADER_SIZE:
        raise MalformedPayload("header too long", reason="malformed_envelope")
    header_bytes = bytes(take(header_len))
    header = RequestHeader.decode(header_bytes, accepted_suites=accepted_suites)
    (body_len,) = struct.unpack(">I", take(4))
    if body_len < AEAD_OVERHEAD:
        raise MalformedPayload("body too short", reason="malformed_envelope")
    body = take(body_len)
    (sig_len,) = struct.unpack(">H", take(2))
    if sig_len != SIGNATURE_SIZE:
        raise MalformedPayload("signature has the wrong length", reason="malformed_envelope")
    signature = bytes(take(sig_len))
    if pos != len(data):
        raise MalformedPayload("trailing bytes after envelope", reason="malformed_envelope")
    return Envelope(header=header, header_bytes=header_bytes, body=body, signature=signature, raw=data)


def check_timestamp(envelope: Envelope, now: float, window_s: float) -> None:
    """Refuse a request whose timestamp is more than ``window_s`` seconds from ``now``.

    Raises
    ------
    StaleRequest
        ``reason="stale_timestamp"`` (too old) or ``"future_timestamp"`` (too far ahead).
    """
    if window_s < 0:
        raise ValueError("window_s must be non-negative")
    delta_ms = _timestamp_ms(now) - envelope.timestamp_ms
    limit_ms = int(window_s * 1000)
    if delta_ms > limit_ms:
        raise StaleRequest("request timestamp is too old", reason="stale_timestamp")
    if -delta_ms > limit_ms:
        raise StaleRequest("request timestamp is in the future", reason="future_timestamp")


def verify_envelope_signature(envelope: Envelope, device_public_key: VerifyKey) -> None:
    """Check the device's composite signature over ``header || SHA-256(body)``.

    Raises
    ------
    InvalidSignature
        The signature does not verify under ``device_public_key``.
    """
    if not isinstance(device_public_key, VerifyKey):
        raise TypeError("device_public_key must be a VerifyKey")
    device_public_key.verify(
        envelope.signature, _signed_message(envelope.header_bytes, envelope.body), SigningContext.REQUEST
    )


def check_key_source(envelope: Envelope, allowed_key_sources: Collection[KeySource | str]) -> None:
    """Refuse a key source the server's policy does not allow for this device.

    Raises
    ------
    PermissionDenied
        ``reason="key_source_not_allowed"``.
    """
    allowed = {KeySource(s) for s in allowed_key_sources}
    if not allowed:
        raise ValueError("allowed_key_sources must not be empty")
    if envelope.key_source not in allowed:
        raise PermissionDenied(
            f"key source {envelope.key_source.value} is not allowed for this device",
            reason="key_source_not_allowed",
        )


class ResponseSealer:
    """Seals the single response to one decrypted request (holds that request's ``k_resp``).

    Returned by :func:`decrypt_envelope`; not constructed directly. :meth:`seal` works once.
    """

    __slots__ = ("_aead", "_sealed", "_th")

    def __init__(self, keys: RequestKeys) -> None:
        self._aead = Aead(keys.k_resp)
        self._th = keys.transcript_hash
        self._sealed = False

    @property
    def request_hash(self) -> bytes:
        """SHA-256 of the request header this response answers."""
        return self._th

    def seal(self, payload: bytes) -> bytes:
        """Encrypt the response payload; returns the response bytes.

        Raises
        ------
        CryptoError
            ``reason="response_already_sealed"`` on a second call: one request, one response.
        """
        if self._sealed:
            raise CryptoError("this request's response was already sealed", reason="response_already_sealed")
        self._sealed = True
        return _RESPONSE_PREFIX + self._aead.encrypt(bytes(payload), _response_aad(self._th))

    def __repr__(self) -> str:
        return f"ResponseSealer(request={self._th.hex()[:16]}..., sealed={self._sealed})"


def decrypt_envelope(
    envelope: Envelope,
    server_kem_private: XWingPrivateKey | None,
    *,
    allowed_key_sources: Collection[KeySource | str],
    extra_secret: bytes | None = None,
) -> tuple[bytes, ResponseSealer]:
    """Decapsulate, derive the request keys and decrypt the body.

    Call after :func:`verify_envelope_signature`. The key source must be one the caller's policy
    allows, and the caller must supply exactly the secrets the header names.

    Parameters
    ----------
    envelope:
        From :func:`parse_envelope`.
    server_kem_private:
        The X-Wing private key (may be ``None`` only for ``key_source="qkd"``).
    allowed_key_sources:
        The device's policy, e.g. ``{"hybrid"}`` for a device configured for QKD + ML-KEM.
    extra_secret:
        The QKD key fetched for ``envelope.key_ids`` (``qkd``/``hybrid``), else ``None``.

    Returns
    -------
    tuple[bytes, ResponseSealer]
        The request payload and the sealer for its response.

    Raises
    ------
    PermissionDenied
        ``reason="key_source_not_allowed"``.
    QKDError
        ``reason="qkd_key_required"``: the header names QKD keys but none was given, or
        ``"invalid_qkd_key"``: wrong length.
    CryptoError
        ``reason="key_source_mismatch"``: a QKD key given for an ``mlkem`` request, or no KEM key.
    DecryptionFailed
        Wrong key, tampered ciphertext or header, a ciphertext for another server key.
    """
    check_key_source(envelope, allowed_key_sources)
    source = envelope.key_source
    uses_kem = source in (KeySource.MLKEM, KeySource.HYBRID)
    uses_qkd = source in (KeySource.QKD, KeySource.HYBRID)
    if uses_qkd and extra_secret is None:
        raise QKDError("the request uses QKD keys but none was supplied", reason="qkd_key_required")
    if not uses_qkd and extra_secret is not None:
        raise CryptoError("a QKD key was supplied for an mlkem request", reason="key_source_mismatch")
    if extra_secret is not None and not MIN_QKD_KEY_SIZE <= len(extra_secret) <= MAX_QKD_KEY_SIZE:
        raise QKDError("QKD key must be 32 to 1024 bytes", reason="invalid_qkd_key")
    kem_secret: bytes | None = None
    if uses_kem:
        if not isinstance(server_kem_private, XWingPrivateKey):
            raise CryptoError("the request needs the server KEM private key", reason="key_source_mismatch")
        kem_secret = server_kem_private.decapsulate(envelope.kem_ciphertext)
    keys = derive_request_keys(
        envelope.header_bytes,
        source,
        kem_secret=kem_secret,
        qkd_key=bytes(extra_secret) if extra_secret is not None else None,
    )
    try:
        payload = Aead(keys.k_req).decrypt(envelope.body, envelope.header_bytes)
    except DecryptionFailed:
        raise DecryptionFailed("request body does not decrypt", reason="decryption_failed") from None
    return payload, ResponseSealer(keys)
