"""AES-256-GCM with random 96-bit nonces that the caller never sees, and required associated data."""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qflare.crypto._random import random_bytes
from qflare.errors import CryptoError, DecryptionFailed

__all__ = ["Aead", "KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE"]

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
# NIST SP 800-38D §8.3: with random 96-bit nonces, at most 2**32 encryptions under one key.
_MAX_ENCRYPTIONS: Final = 2**32


class Aead:
    """AES-256-GCM authenticated encryption.

    ``encrypt`` returns ``nonce (12) || ciphertext || tag (16)`` with a fresh random nonce; the nonce
    is never an argument. Associated data is required and must not be empty: bind the context
    (round id, device id, purpose label) into it. Every decryption failure (wrong key, tampered
    bytes, wrong associated data, truncated input) raises one :class:`DecryptionFailed` and exposes
    no plaintext.

    Parameters
    ----------
    key:
        32 secret bytes, e.g. from the request key schedule.
    """

    __slots__ = ("_aesgcm", "_count")

    def __init__(self, key: bytes) -> None:
        key = bytes(key)
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM key must be 32 bytes")
        self._aesgcm = AESGCM(key)
        self._count = 0

    @staticmethod
    def generate_key() -> bytes:
        """32 fresh random bytes."""
        return random_bytes(KEY_SIZE)

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``, authenticate ``associated_data``."""
        _check_ad(associated_data)
        if self._count >= _MAX_ENCRYPTIONS:
            raise CryptoError("AEAD key usage limit reached; derive a new key", reason="key_usage_limit")
        self._count += 1
        nonce = random_bytes(NONCE_SIZE)
        return nonce + self._aesgcm.encrypt(nonce, bytes(plaintext), bytes(associated_data))

    def decrypt(self, ciphertext: bytes | memoryview, associated_data: bytes) -> bytes:
        """Verify and decrypt the output of :meth:`encrypt`.

        Raises
        ------
        DecryptionFailed
            For any failure; no partial plaintext is returned.
        """
        _check_ad(associated_data)
        data = memoryview(ciphertext).cast("B")  # slices of a view: a 4 MB body is not copied to decrypt it
        if len(data) < OVERHEAD:
            raise DecryptionFailed("ciphertext too short", reason="decryption_failed")
        try:
            return self._aesgcm.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], bytes(associated_data))
        except InvalidTag:
            raise DecryptionFailed("authentication failed", reason="decryption_failed") from None

    def __repr__(self) -> str:
        return "Aead(<AES-256-GCM key>)"


def _check_ad(associated_data: bytes) -> None:
    if not isinstance(associated_data, bytes | bytearray | memoryview):
        raise TypeError("associated_data must be bytes")
    if len(associated_data) == 0:
        raise ValueError("associated_data is required: bind the message's context into it")
