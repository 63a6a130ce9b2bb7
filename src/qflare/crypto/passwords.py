"""Operator passwords, hashed with scrypt (RFC 7914).

``hash_password`` returns ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``; ``verify_password`` raises
:class:`~qflare.errors.AuthenticationError` on a mismatch (it never returns ``False``). For an unknown
account, verify against :data:`DUMMY_HASH` so that the time taken does not tell which names exist.
"""

from __future__ import annotations

import base64
import os

from qflare.crypto import _scrypt
from qflare.errors import AuthenticationError

__all__ = ["DUMMY_HASH", "hash_password", "verify_password"]

LOG2_N, R, P, SALT_BYTES, HASH_BYTES = 15, 8, 1, 16, 32  # 32 MiB and ~0.1 s per check on a laptop core
MIN_LENGTH = 12


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_password(password: str) -> str:
    """A new scrypt hash of ``password`` (at least 12 characters; no default exists)."""
    if len(password) < MIN_LENGTH:
        from qflare.errors import ConfigError

        raise ConfigError(f"an operator password needs at least {MIN_LENGTH} characters", reason="weak_password")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt.derive(password.encode(), salt, n=1 << LOG2_N, r=R, p=P, length=HASH_BYTES)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> None:
    """``None`` if ``password`` matches ``encoded``; else :class:`AuthenticationError` ``bad_credentials``."""
    try:
        scheme, log2_n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20:
            raise ValueError(scheme)
        ok = _scrypt.matches(password.encode(), base64.b64decode(salt), base64.b64decode(digest),
                             n=1 << int(log2_n), r=int(r), p=int(p))
    except ValueError:
        ok = False
    if not ok:
        raise AuthenticationError("wrong operator name or password", reason="bad_credentials")


DUMMY_HASH = "scrypt$15$8$1$" + _b64(b"\0" * SALT_BYTES) + "$" + _b64(b"\0" * HASH_BYTES)
