"""Sealing: AES-256-GCM under a key bound to the platform and to the enclave's measurement.

Like SGX ``EGETKEY`` with ``KEYPOLICY=MRENCLAVE``: every blob gets a fresh random ``key_id`` and its
own key ::

    key = HKDF-SHA256(IKM  = platform sealing root,
                      salt = "qflare/v1/seal",
                      info = "mrenclave" 0x00 || measurement (32) || key_id (16) || purpose)

so an enclave with another measurement (modified code or configuration) derives other keys and
cannot unseal, and a blob sealed for one purpose cannot be opened as another. Blob layout::

    magic "QFSL" | version u8 = 1 | policy u8 = 1 (MRENCLAVE) | key_id 16 | purpose: u8 len || ASCII
    | header: u32 len || bytes | AES-256-GCM(nonce || ciphertext || tag), AAD = everything before it

The header is public (the host can read it, e.g. an update's id) but authenticated on unseal.
HKDF (RFC 5869) is built here from the standard library's HMAC: ``qflare.crypto`` exposes no public
KDF yet (asked for in the enclave report).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from qflare.crypto.aead import Aead
from qflare.errors import CryptoError, DecryptionFailed

__all__ = ["SEAL_MAGIC", "SealingKey", "hkdf_sha256", "read_sealed_header"]

SEAL_MAGIC: Final = b"QFSL"
_VERSION: Final = 1
_POLICY_MRENCLAVE: Final = 1
_KEY_ID_SIZE: Final = 16
_SALT: Final = b"qflare/v1/seal"
_MAX_HEADER: Final = 4096


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info`` to ``length`` bytes."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF length out of range")
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _purpose_bytes(purpose: str) -> bytes:
    raw = purpose.encode("ascii")
    if not 0 < len(raw) < 256:
        raise ValueError("sealing purpose must be 1-255 ASCII characters")
    return raw


def _random_key_id() -> bytes:
    # A fresh AEAD key (32 random bytes) is the package's one source of randomness; take 16 of them.
    return Aead.generate_key()[:_KEY_ID_SIZE]


class SealingKey:
    """Seals and unseals blobs for one enclave identity on one platform.

    Parameters
    ----------
    root:
        The platform sealing root (simulated: a per-platform secret; SGX: the ``_sgx_mrenclave`` key).
    measurement:
        The enclave's 32-byte measurement; part of every derived key.
    """

    __slots__ = ("_measurement", "_root")

    def __init__(self, root: bytes, measurement: bytes) -> None:
        if len(root) < 16:
            raise ValueError("sealing root must be at least 16 bytes")
        if len(measurement) != 32:
            raise ValueError("measurement must be 32 bytes")
        self._root = bytes(root)
        self._measurement = bytes(measurement)

    def _key(self, key_id: bytes, purpose: bytes) -> Aead:
        info = b"mrenclave\x00" + self._measurement + key_id + purpose
        return Aead(hkdf_sha256(self._root, salt=_SALT, info=info))

    def seal(self, plaintext: bytes, *, purpose: str, header: bytes = b"") -> bytes:
        """Seal ``plaintext``; ``header`` travels in clear but authenticated."""
        return b"".join(self.seal_parts(plaintext, purpose=purpose, header=header))

    def seal_parts(self, plaintext: bytes, *, purpose: str, header: bytes = b"") -> tuple[bytes, bytes]:
        """:meth:`seal` as ``(prefix, ciphertext)``, to write out without joining (large blobs)."""
        p = _purpose_bytes(purpose)
        if len(header) > _MAX_HEADER:
            raise ValueError("sealed header too long")
        key_id = _random_key_id()
        prefix = (
            SEAL_MAGIC
            + bytes([_VERSION, _POLICY_MRENCLAVE])
            + key_id
            + bytes([len(p)])
            + p
            + struct.pack(">I", len(header))
            + bytes(header)
        )
        return prefix, self._key(key_id, p).encrypt(plaintext, prefix)

    def unseal(self, blob: bytes, *, purpose: str) -> tuple[bytes, bytes]:
        """Return ``(header, plaintext)``.

        Raises
        ------
        CryptoError
            ``reason="malformed_sealed_blob"`` (not a sealed blob, or sealed for another purpose) or
            ``"unseal_failed"`` (altered, or sealed by another enclave or on another platform).
        """
        data = bytes(blob)
        key_id, p, header, body_at = _parse(data, purpose)
        try:
            plaintext = self._key(key_id, p).decrypt(data[body_at:], data[:body_at])
        except DecryptionFailed:
            raise CryptoError(
                "sealed blob does not open: altered, or sealed by another enclave or platform",
                reason="unseal_failed",
            ) from None
        return header, plaintext

    def __repr__(self) -> str:
        return f"SealingKey(measurement={self._measurement.hex()[:16]}...)"


def read_sealed_header(blob: bytes, *, purpose: str) -> bytes:
    """The public header of a sealed blob (not authenticated until it is unsealed)."""
    return _parse(bytes(blob), purpose)[2]


def _parse(data: bytes, purpose: str) -> tuple[bytes, bytes, bytes, int]:
    expected = _purpose_bytes(purpose)
    bad = CryptoError(f"not a sealed {purpose} blob", reason="malformed_sealed_blob")
    fixed = len(SEAL_MAGIC) + 2 + _KEY_ID_SIZE + 1
    if len(data) < fixed or data[:4] != SEAL_MAGIC or data[4] != _VERSION or data[5] != _POLICY_MRENCLAVE:
        raise bad
    key_id = data[6 : 6 + _KEY_ID_SIZE]
    pos = 6 + _KEY_ID_SIZE
    plen = data[pos]
    pos += 1
    p = data[pos : pos + plen]
    pos += plen
    if p != expected or len(data) < pos + 4:
        raise bad
    (hlen,) = struct.unpack(">I", data[pos : pos + 4])
    pos += 4
    if hlen > _MAX_HEADER or len(data) < pos + hlen:
        raise bad
    header = data[pos : pos + hlen]
    return key_id, p, header, pos + hlen
