"""Raw component keys for signed notes (:mod:`qflare.ledger.note`): Ed25519 and ML-DSA-65.

A C2SP signed note carries bare algorithm signatures, not composite ones: an Ed25519 line (type
0x01) that any standard verifier (``golang.org/x/mod/sumdb/note``) accepts, and QFLARE's ML-DSA-65
line. The enclave's hybrid key (:mod:`qflare.crypto._composite`) is ``mldsaSeed || edSeed``; these
helpers sign with one half at a time. Private seeds pass through here only with
``secret_access.TOKEN``.

Failure raises :class:`qflare.errors.InvalidSignature` (never returns ``False``); a public key that
does not parse raises :class:`qflare.errors.MalformedPayload`.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature as _PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qflare.crypto.secret_access import SecretKeyAccess, require_token
from qflare.errors import InvalidSignature, MalformedPayload

__all__ = [
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "MLDSA65_PUBLIC_KEY_SIZE",
    "MLDSA65_SIGNATURE_SIZE",
    "Ed25519Verifier",
    "Ed25519Signer",
    "Mldsa65Signer",
    "Mldsa65Verifier",
]

ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
MLDSA65_PUBLIC_KEY_SIZE: Final = 1952
MLDSA65_SIGNATURE_SIZE: Final = 3309


class Ed25519Signer:
    """An Ed25519 private key from its 32-byte seed (needs ``secret_access.TOKEN``)."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        seed = bytes(seed)
        if len(seed) != 32:
            raise ValueError("Ed25519 seed must be 32 bytes")
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self._public = self._key.public_key().public_bytes_raw()

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """The 64-byte deterministic Ed25519 signature (RFC 8032) over ``message``."""
        return self._key.sign(bytes(message))


class Ed25519Verifier:
    """An Ed25519 public key (32 bytes)."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_key: bytes) -> None:
        raw = bytes(public_key)
        if len(raw) != ED25519_PUBLIC_KEY_SIZE:
            raise MalformedPayload("Ed25519 public key must be 32 bytes", reason="invalid_public_key")
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise MalformedPayload("invalid Ed25519 public key", reason="invalid_public_key") from None
        self._raw = raw

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return self._raw

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return ``None`` if ``signature`` verifies, else raise :class:`InvalidSignature`."""
        signature = bytes(signature)
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidSignature("Ed25519 signature must be 64 bytes", reason="bad_signature")
        try:
            self._key.verify(signature, bytes(message))
        except _PycaInvalidSignature:
            raise InvalidSignature("Ed25519 signature does not verify", reason="bad_signature") from None


class Mldsa65Signer:
    """An ML-DSA-65 private key from its 32-byte FIPS 204 seed (needs ``secret_access.TOKEN``).

    Signing is hedged (randomised by OpenSSL), so signatures differ between calls.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        seed = bytes(seed)
        if len(seed) != 32:
            raise ValueError("ML-DSA-65 seed must be 32 bytes")
        self._key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        self._public = self._key.public_key().public_bytes_raw()

    def public_bytes(self) -> bytes:
        """The 1952-byte public key."""
        return self._public

    def sign(self, message: bytes, context: bytes) -> bytes:
        """The 3309-byte signature over ``message`` with the FIPS 204 context string ``context``."""
        if len(context) > 255:
            raise ValueError("context must be at most 255 bytes")
        return self._key.sign(bytes(message), bytes(context))


class Mldsa65Verifier:
    """An ML-DSA-65 public key (1952 bytes)."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_key: bytes) -> None:
        raw = bytes(public_key)
        if len(raw) != MLDSA65_PUBLIC_KEY_SIZE:
            raise MalformedPayload("ML-DSA-65 public key must be 1952 bytes", reason="invalid_public_key")
        try:
            self._key = mldsa.MLDSA65PublicKey.from_public_bytes(raw)
        except ValueError:
            raise MalformedPayload("invalid ML-DSA-65 public key", reason="invalid_public_key") from None
        self._raw = raw

    def public_bytes(self) -> bytes:
        """The 1952-byte public key."""
        return self._raw

    def verify(self, signature: bytes, message: bytes, context: bytes) -> None:
        """Return ``None`` if ``signature`` verifies in ``context``, else raise :class:`InvalidSignature`."""
        signature = bytes(signature)
        if len(signature) != MLDSA65_SIGNATURE_SIZE:
            raise InvalidSignature("ML-DSA-65 signature must be 3309 bytes", reason="bad_signature")
        try:
            self._key.verify(signature, bytes(message), bytes(context))
        except _PycaInvalidSignature:
            raise InvalidSignature("ML-DSA-65 signature does not verify", reason="bad_signature") from None
