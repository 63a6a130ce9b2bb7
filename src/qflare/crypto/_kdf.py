"""Key derivation: HKDF-SHA256 (RFC 5869) and scrypt (RFC 7914), from ``cryptography``."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["hkdf_expand", "hkdf_extract", "scrypt"]


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """``PRK = HKDF-Extract(salt, IKM)`` with SHA-256 (32 bytes)."""
    return HKDF.extract(hashes.SHA256(), salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """``OKM = HKDF-Expand(PRK, info, L)`` with SHA-256."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def scrypt(passphrase: bytes, salt: bytes, *, n: int, r: int, p: int, length: int = 32) -> bytes:
    """scrypt(passphrase, salt, N, r, p) -> ``length`` bytes."""
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(passphrase)
