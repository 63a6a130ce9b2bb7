"""X-Wing hybrid KEM (ML-KEM-768 + X25519), draft-connolly-cfrg-xwing-kem-10/-11.

Built only from ``cryptography``'s ML-KEM-768 and X25519 and ``hashlib``'s SHA3-256 / SHAKE256,
following the draft exactly:

- decapsulation key ``sk``: 32 bytes; ``expanded = SHAKE256(sk, 96 bytes)``;
  ``(pk_M, sk_M) = ML-KEM-768.KeyGen_internal(d = expanded[0:32], z = expanded[32:64])``
  (``MLKEM768PrivateKey.from_seed_bytes(d || z)``), ``sk_X = expanded[64:96]``;
- encapsulation key ``pk = pk_M (1184) || pk_X (32)``; ciphertext ``ct = ct_M (1088) || ct_X (32)``;
- ``ss = SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``, ``XWingLabel = 5c2e2f2f5e5c``
  (label last, as in the current draft).

One deliberate deviation: ``cryptography`` refuses an all-zero X25519 output (a low-order
``ct_X``), so decapsulating such a ciphertext raises :class:`DecryptionFailed` instead of feeding
zeros to the combiner. Honest encapsulations never produce it.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from qflare.crypto._random import active_override, random_bytes
from qflare.crypto.secret_access import TOKEN, SecretKeyAccess, require_token
from qflare.errors import CryptoError, DecryptionFailed, MalformedPayload

__all__ = [
    "CIPHERTEXT_SIZE",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SHARED_SECRET_SIZE",
    "XWING_LABEL",
    "XWingPrivateKey",
    "XWingPublicKey",
    "combiner",
]

SEED_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = 1216
CIPHERTEXT_SIZE: Final = 1120
SHARED_SECRET_SIZE: Final = 32
XWING_LABEL: Final = bytes.fromhex("5c2e2f2f5e5c")  # "\./" "/^\"

_MLKEM_PK: Final = 1184
_MLKEM_CT: Final = 1088


def combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The X-Wing combiner: ``SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


class XWingPublicKey:
    """An X-Wing encapsulation key (1216 bytes: ML-KEM-768 key then X25519 key).

    Create with :meth:`from_bytes` or :meth:`XWingPrivateKey.public_key`; the constructor is private.
    """

    __slots__ = ("_mlkem", "_raw", "_x25519")

    def __init__(self, raw: bytes, mlkem_key: mlkem.MLKEM768PublicKey, x_key: x25519.X25519PublicKey):
        self._raw = raw
        self._mlkem = mlkem_key
        self._x25519 = x_key

    @classmethod
    def from_bytes(cls, data: bytes) -> XWingPublicKey:
        """Parse a 1216-byte encapsulation key; runs the FIPS 203 §7.2 modulus check.

        Raises
        ------
        MalformedPayload
            Wrong length or an ML-KEM key that fails the encapsulation key check.
        """
        data = bytes(data)
        if len(data) != PUBLIC_KEY_SIZE:
            raise MalformedPayload("X-Wing public key must be 1216 bytes", reason="invalid_public_key")
        try:
            m = mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM_PK])
            x = x25519.X25519PublicKey.from_public_bytes(data[_MLKEM_PK:])
        except ValueError:
            raise MalformedPayload("invalid X-Wing public key", reason="invalid_public_key") from None
        return cls(data, m, x)

    def to_bytes(self) -> bytes:
        """The 1216-byte encoding ``pk_M || pk_X``."""
        return self._raw

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Return ``(shared_secret, ciphertext)``: a fresh 32-byte secret and its 1120-byte ciphertext.

        Raises
        ------
        CryptoError
            The X25519 component is a low-order point (no honest key is).
        """
        ek_x = x25519.X25519PrivateKey.from_private_bytes(random_bytes(32))
        ct_x = ek_x.public_key().public_bytes_raw()
        try:
            ss_x = ek_x.exchange(self._x25519)
        except ValueError:
            raise CryptoError("X-Wing public key has a low-order X25519 part", reason="invalid_public_key") from None
        override = active_override()
        replay = override.take_mlkem_replay() if override is not None else None
        if replay is None:
            ss_m, ct_m = self._mlkem.encapsulate()
        else:
            ss_m, ct_m = replay.shared_secret, replay.ciphertext
        pk_x = self._raw[_MLKEM_PK:]
        return combiner(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XWingPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"XWingPublicKey({hashlib.sha256(self._raw).hexdigest()[:16]}...)"


class XWingPrivateKey:
    """An X-Wing decapsulation key: a 32-byte seed, kept expanded in memory.

    Create with :meth:`generate` or :meth:`from_seed` (test vectors, key files).
    """

    __slots__ = ("_mlkem", "_public", "_seed", "_x25519")

    def __init__(self, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        if len(seed) != SEED_SIZE:
            raise ValueError("X-Wing seed must be 32 bytes")
        expanded = hashlib.shake_256(seed).digest(96)
        self._seed = bytes(seed)
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[0:64])
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
        pk_m = self._mlkem.public_key()
        pk_x = self._x25519.public_key()
        self._public = XWingPublicKey(pk_m.public_bytes_raw() + pk_x.public_bytes_raw(), pk_m, pk_x)

    @classmethod
    def generate(cls) -> XWingPrivateKey:
        """A new key from 32 fresh random bytes."""
        return cls(random_bytes(SEED_SIZE), TOKEN)

    @classmethod
    def from_seed(cls, seed: bytes, token: SecretKeyAccess) -> XWingPrivateKey:
        """Rebuild a key from its 32-byte seed (needs ``secret_access.TOKEN``)."""
        return cls(bytes(seed), token)

    def private_bytes(self, token: SecretKeyAccess) -> bytes:
        """The 32-byte seed (needs ``secret_access.TOKEN``)."""
        require_token(token)
        return self._seed

    def public_key(self) -> XWingPublicKey:
        """The matching encapsulation key."""
        return self._public

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Recover the 32-byte shared secret from a 1120-byte ciphertext.

        ML-KEM rejects implicitly: a tampered ciphertext yields an unrelated secret (and so a later
        AEAD failure), not an exception.

        Raises
        ------
        MalformedPayload
            Wrong ciphertext length.
        DecryptionFailed
            A low-order X25519 ciphertext component.
        """
        ciphertext = bytes(ciphertext)
        if len(ciphertext) != CIPHERTEXT_SIZE:
            raise MalformedPayload("X-Wing ciphertext must be 1120 bytes", reason="invalid_kem_ciphertext")
        ct_m, ct_x = ciphertext[:_MLKEM_CT], ciphertext[_MLKEM_CT:]
        try:
            ss_m = self._mlkem.decapsulate(ct_m)
            ss_x = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
        except ValueError:
            raise DecryptionFailed("KEM decapsulation failed", reason="decryption_failed") from None
        return combiner(ss_m, ss_x, ct_x, self._public.to_bytes()[_MLKEM_PK:])

    def __repr__(self) -> str:
        return f"XWingPrivateKey(public={self._public!r})"
