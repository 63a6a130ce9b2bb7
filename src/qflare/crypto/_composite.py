"""Composite ML-DSA-65 + Ed25519 signatures, id-MLDSA65-Ed25519-SHA512
(draft-ietf-lamps-pq-composite-sigs, OID 1.3.6.1.5.5.7.6.48).

::

    M'       = Prefix || Label || len(ctx) (1 byte) || ctx || SHA-512(M)
    Prefix   = "CompositeAlgorithmSignatures2025"   (32 ASCII bytes)
    Label    = "COMPSIG-MLDSA65-Ed25519-SHA512"     (30 ASCII bytes)
    mldsaSig = ML-DSA-65.Sign(mldsaSK, M', ctx = Label)     (3309 bytes, hedged/randomized)
    edSig    = Ed25519.Sign(edSK, M')                       (64 bytes, deterministic)
    sig      = mldsaSig || edSig                            (3373 bytes)
    pk       = mldsaPK (1952) || edPK (32)                  (1984 bytes)
    sk       = mldsaSeed (32) || edSeed (32)                (64 bytes)

Verification succeeds only if both components verify.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature as _PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qflare.crypto._random import random_bytes
from qflare.crypto.contexts import SigningContext
from qflare.crypto.secret_access import TOKEN, SecretKeyAccess, require_token
from qflare.errors import InvalidSignature, MalformedPayload

__all__ = [
    "ALGORITHM",
    "LABEL",
    "PREFIX",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "SigningKey",
    "VerifyKey",
    "message_representative",
]

ALGORITHM: Final = "id-MLDSA65-Ed25519-SHA512"
PREFIX: Final = b"CompositeAlgorithmSignatures2025"
LABEL: Final = b"COMPSIG-MLDSA65-Ed25519-SHA512"
SEED_SIZE: Final = 64
PUBLIC_KEY_SIZE: Final = 1984
SIGNATURE_SIZE: Final = 3373
_MLDSA_PK: Final = 1952
_MLDSA_SIG: Final = 3309


def message_representative(message: bytes, ctx: bytes) -> bytes:
    """``M' = Prefix || Label || len(ctx) || ctx || SHA-512(message)``."""
    if len(ctx) > 255:
        raise ValueError("context must be at most 255 bytes")
    return PREFIX + LABEL + bytes([len(ctx)]) + ctx + hashlib.sha512(message).digest()


def _context_bytes(context: SigningContext) -> bytes:
    if not isinstance(context, SigningContext):
        raise TypeError("context must be a SigningContext member")
    return context.value


class VerifyKey:
    """A composite public key (1984 bytes). Create with :meth:`from_bytes` or
    :meth:`SigningKey.public_key`."""

    __slots__ = ("_ed", "_mldsa", "_raw")

    def __init__(self, raw: bytes, mldsa_key: mldsa.MLDSA65PublicKey, ed_key: ed25519.Ed25519PublicKey):
        self._raw = raw
        self._mldsa = mldsa_key
        self._ed = ed_key

    @classmethod
    def from_bytes(cls, data: bytes) -> VerifyKey:
        """Parse ``mldsaPK || edPK``.

        Raises
        ------
        MalformedPayload
            Wrong length or a component that does not parse.
        """
        data = bytes(data)
        if len(data) != PUBLIC_KEY_SIZE:
            raise MalformedPayload("composite public key must be 1984 bytes", reason="invalid_public_key")
        try:
            m = mldsa.MLDSA65PublicKey.from_public_bytes(data[:_MLDSA_PK])
            e = ed25519.Ed25519PublicKey.from_public_bytes(data[_MLDSA_PK:])
        except ValueError:
            raise MalformedPayload("invalid composite public key", reason="invalid_public_key") from None
        return cls(data, m, e)

    def to_bytes(self) -> bytes:
        """The 1984-byte encoding ``mldsaPK || edPK``."""
        return self._raw

    def verify(self, signature: bytes, message: bytes, context: SigningContext) -> None:
        """Return ``None`` if both component signatures verify over ``message`` in ``context``.

        Raises
        ------
        InvalidSignature
            Wrong length, or either component does not verify.
        """
        self._verify_ctx(signature, message, _context_bytes(context))

    def _verify_ctx(self, signature: bytes, message: bytes, ctx: bytes) -> None:
        signature = bytes(signature)
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature("composite signature must be 3373 bytes", reason="bad_signature")
        m_prime = message_representative(bytes(message), ctx)
        ok = True
        try:
            self._mldsa.verify(signature[:_MLDSA_SIG], m_prime, LABEL)
        except _PycaInvalidSignature:
            ok = False
        try:
            self._ed.verify(signature[_MLDSA_SIG:], m_prime)
        except _PycaInvalidSignature:
            ok = False
        if not ok:
            raise InvalidSignature("signature does not verify", reason="bad_signature")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({hashlib.sha256(self._raw).hexdigest()[:16]}...)"


class SigningKey:
    """A composite ML-DSA-65 + Ed25519 signing key, stored as its 64-byte seed
    ``mldsaSeed || edSeed``. Create with :meth:`generate` or :meth:`from_seed`."""

    __slots__ = ("_ed", "_mldsa", "_public", "_seed")

    def __init__(self, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        seed = bytes(seed)
        if len(seed) != SEED_SIZE:
            raise ValueError("composite signing seed must be 64 bytes")
        self._seed = seed
        self._mldsa = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed[:32])
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed[32:])
        m_pub = self._mldsa.public_key()
        e_pub = self._ed.public_key()
        self._public = VerifyKey(m_pub.public_bytes_raw() + e_pub.public_bytes_raw(), m_pub, e_pub)

    @classmethod
    def generate(cls) -> SigningKey:
        """A new key from 64 fresh random bytes (two independent component seeds)."""
        return cls(random_bytes(SEED_SIZE), TOKEN)

    @classmethod
    def from_seed(cls, seed: bytes, token: SecretKeyAccess) -> SigningKey:
        """Rebuild a key from ``mldsaSeed || edSeed`` (needs ``secret_access.TOKEN``)."""
        return cls(seed, token)

    def private_bytes(self, token: SecretKeyAccess) -> bytes:
        """The 64-byte seed (needs ``secret_access.TOKEN``)."""
        require_token(token)
        return self._seed

    def public_key(self) -> VerifyKey:
        """The matching verification key."""
        return self._public

    def sign(self, message: bytes, context: SigningContext) -> bytes:
        """Sign ``message`` in ``context``; returns the 3373-byte ``mldsaSig || edSig``."""
        return self._sign_ctx(message, _context_bytes(context))

    def _sign_ctx(self, message: bytes, ctx: bytes) -> bytes:
        m_prime = message_representative(bytes(message), ctx)
        return self._mldsa.sign(m_prime, LABEL) + self._ed.sign(m_prime)

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public!r})"
