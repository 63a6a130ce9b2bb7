"""scrypt (RFC 7914) from ``cryptography``; only :mod:`qflare.crypto.passwords` uses it."""

from __future__ import annotations

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


def derive(password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)


def matches(password: bytes, salt: bytes, expected: bytes, *, n: int, r: int, p: int) -> bool:
    try:
        Scrypt(salt=salt, length=len(expected), n=n, r=r, p=p).verify(password, expected)  # constant time
    except InvalidKey:
        return False
    return True
