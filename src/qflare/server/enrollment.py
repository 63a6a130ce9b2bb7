"""Device enrollment: by an operator (public key file) or by the device itself with a one-time token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from qflare.crypto.keyfile import fingerprint, parse_public_key
from qflare.crypto.signing import SigningContext, SigningKey, VerifyKey
from qflare.errors import InvalidInput, MalformedPayload, QFlareError
from qflare.server.storage import DeviceRecord, NewEvent, Repository


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def parse_device_key(text: str) -> VerifyKey:
    """Parse a device public key file; only composite ML-DSA-65 + Ed25519 keys are identities."""
    try:
        key = parse_public_key(text.encode("utf-8"))
    except QFlareError as exc:
        raise MalformedPayload(f"public key: {exc.message}", reason="bad_public_key") from None
    if not isinstance(key, VerifyKey):
        raise InvalidInput("public key is not a signing identity key", reason="bad_public_key")
    return key


def enrollment_message(device_id: str, token: str, key: VerifyKey) -> bytes:
    """What a device signs to enroll itself: binds its id, the token and its key (docs/protocol.md)."""
    return b"".join(
        [b"qflare-enroll-v1\x00", device_id.encode("ascii"), b"\x00", hashlib.sha256(token.encode()).digest(),
         key.to_bytes()]
    )


def sign_enrollment(device_key: SigningKey, device_id: str, token: str) -> str:
    sig = device_key.sign(enrollment_message(device_id, token, device_key.public_key()), SigningContext.ENROLLMENT)
    return base64.b64encode(sig).decode()


def enroll_by_operator(
    repo: Repository, device_id: str, public_key: str, key_source: str, *, now: float,
    max_examples: int | None = None,
) -> DeviceRecord:
    """``max_examples``: the most training examples one update of the device may claim (its declared
    dataset size); larger claims are refused (``num_examples_above_cap``)."""
    key = parse_device_key(public_key)
    fp = fingerprint(key)
    cap = "" if max_examples is None else f", at most {max_examples} examples per update"
    return repo.add_device(device_id, now=now, public_key=key.to_bytes(), fingerprint=fp, key_source=key_source,
                           max_examples=max_examples,
                           event=NewEvent("device_enrolled", device_id=device_id, detail=f"by operator, key {fp}{cap}"))


def enroll_with_token(repo: Repository, device_id: str, public_key: str, token: str, signature: str, *,
                      now: float) -> DeviceRecord:
    key = parse_device_key(public_key)
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPayload("signature is not base64", reason="bad_signature_encoding") from None
    key.verify(sig, enrollment_message(device_id, token, key), SigningContext.ENROLLMENT)
    fp = fingerprint(key)
    return repo.enroll_with_token(token_hash(token), device_id, public_key=key.to_bytes(), fingerprint=fp, now=now,
                                  event=NewEvent("device_enrolled", device_id=device_id, detail=f"by token, key {fp}"))
