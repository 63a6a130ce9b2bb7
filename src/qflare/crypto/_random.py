"""The single source of randomness for :mod:`qflare.crypto`.

Every random byte the package uses (seeds, request nonces, ephemeral X25519 keys, AEAD nonces)
comes from :func:`random_bytes`, which reads ``os.urandom``. Tests and vector generation can swap in
a deterministic source for the current context with :mod:`qflare.crypto.testing`; nothing else can.

ML-KEM encapsulation and ML-DSA signing draw their randomness inside OpenSSL, which the
``cryptography`` API does not let us fix. A test override may therefore *replay* a recorded ML-KEM
encapsulation (:class:`MlkemReplay`); ML-DSA signatures stay randomized (hedged) in every mode.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MlkemReplay",
    "RandomOverride",
    "active_override",
    "random_bytes",
    "reset_override",
    "set_override",
]


@dataclass(frozen=True)
class MlkemReplay:
    """A recorded ML-KEM-768 encapsulation ``(ct_M, ss_M)`` to return instead of a fresh one."""

    ciphertext: bytes
    shared_secret: bytes


class RandomOverride(Protocol):
    """A test-only replacement for the operating system's random source."""

    def take(self, n: int) -> bytes:
        """Return the next ``n`` bytes."""
        ...

    def take_mlkem_replay(self) -> MlkemReplay | None:
        """Return the next recorded ML-KEM encapsulation, or ``None`` to encapsulate normally."""
        ...


_override: contextvars.ContextVar[RandomOverride | None] = contextvars.ContextVar(
    "qflare_crypto_random_override", default=None
)


def random_bytes(n: int) -> bytes:
    """Return ``n`` cryptographically secure random bytes (``os.urandom`` unless overridden)."""
    if n < 0:
        raise ValueError("n must be non-negative")
    override = _override.get()
    if override is None:
        return os.urandom(n)
    out = override.take(n)
    if len(out) != n:  # pragma: no cover - guards a broken test double
        raise RuntimeError("random override returned the wrong number of bytes")
    return out


def active_override() -> RandomOverride | None:
    """The override active in this context, if any."""
    return _override.get()


def set_override(value: RandomOverride | None) -> contextvars.Token[RandomOverride | None]:
    """Install ``value`` for the current context; returns the token to reset it."""
    return _override.set(value)


def reset_override(token: contextvars.Token[RandomOverride | None]) -> None:
    """Undo :func:`set_override`."""
    _override.reset(token)
