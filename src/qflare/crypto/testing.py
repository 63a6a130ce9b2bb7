"""Test-only shortcuts. Everything here is ``Unsafe*``: never use it outside tests and test-vector
generation.

:class:`UnsafeDeterministicRandomness` replaces the random source of :mod:`qflare.crypto` for the
current context (thread / task) with a SHAKE256 stream, and can replay a recorded ML-KEM
encapsulation, so that fixed keys and a fixed seed give fixed envelope bytes::

    with UnsafeDeterministicRandomness(b"seed", mlkem_replay=[UnsafeMlkemReplay(ct_m, ss_m)]):
        envelope, opener = seal_request(...)

What it cannot fix: ML-DSA signing randomness, which OpenSSL draws internally (hedged signing);
the ML-DSA half of every signature therefore differs between runs, and vectors check it by
verification only.
"""

from __future__ import annotations

import contextvars
import hashlib
import warnings
from collections.abc import Iterable
from types import TracebackType

from qflare.crypto import _random
from qflare.crypto._composite import SigningKey, VerifyKey
from qflare.crypto._random import MlkemReplay
from qflare.crypto._xwing import XWingPrivateKey
from qflare.crypto.secret_access import SecretKeyAccess, require_token

__all__ = [
    "UnsafeDeterministicRandomness",
    "UnsafeMlkemReplay",
    "UnsafeRandomnessWarning",
    "UnsafeScriptedRandomness",
    "unsafe_mlkem_decapsulate",
    "unsafe_sign_with_raw_context",
    "unsafe_verify_with_raw_context",
]

UnsafeMlkemReplay = MlkemReplay
"""A recorded ML-KEM encapsulation ``(ciphertext, shared_secret)`` for the replay hooks."""


class UnsafeRandomnessWarning(UserWarning):
    """Emitted whenever deterministic randomness is switched on."""


class _UnsafeOverrideBase:
    def __init__(self, mlkem_replay: Iterable[MlkemReplay]) -> None:
        self._replays = list(mlkem_replay)
        self._token: contextvars.Token[_random.RandomOverride | None] | None = None

    def take(self, n: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def take_mlkem_replay(self) -> MlkemReplay | None:
        return self._replays.pop(0) if self._replays else None

    def __enter__(self) -> _UnsafeOverrideBase:
        warnings.warn("deterministic randomness is active: test use only", UnsafeRandomnessWarning, stacklevel=2)
        self._token = _random.set_override(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _random.reset_override(self._token)
        self._token = None


class UnsafeDeterministicRandomness(_UnsafeOverrideBase):
    """Random bytes from ``SHAKE256("qflare-unsafe-drbg" || seed || counter)``, call by call.

    Parameters
    ----------
    seed:
        Any bytes.
    mlkem_replay:
        Recorded ML-KEM encapsulations returned, in order, by X-Wing encapsulations instead of
        fresh ones (when exhausted, encapsulation is random again).
    """

    def __init__(self, seed: bytes, *, mlkem_replay: Iterable[MlkemReplay] = ()) -> None:
        super().__init__(mlkem_replay)
        self._seed = bytes(seed)
        self._counter = 0

    def take(self, n: int) -> bytes:
        block = hashlib.shake_256(b"qflare-unsafe-drbg" + self._seed + self._counter.to_bytes(8, "big")).digest(n)
        self._counter += 1
        return block


class UnsafeScriptedRandomness(_UnsafeOverrideBase):
    """Returns the given byte strings, in order, as the next random outputs (lengths must match)."""

    def __init__(self, outputs: Iterable[bytes], *, mlkem_replay: Iterable[MlkemReplay] = ()) -> None:
        super().__init__(mlkem_replay)
        self._outputs = [bytes(o) for o in outputs]

    def take(self, n: int) -> bytes:
        if not self._outputs:
            raise RuntimeError("scripted randomness exhausted")
        out = self._outputs.pop(0)
        if len(out) != n:
            raise RuntimeError(f"scripted randomness: {n} bytes requested, next output has {len(out)}")
        return out


def unsafe_mlkem_decapsulate(key: XWingPrivateKey, ct_m: bytes, token: SecretKeyAccess) -> bytes:
    """The ML-KEM-768 component alone: ``ss_M`` for a 1088-byte ``ct_M`` (to build replays)."""
    require_token(token)
    return key._mlkem.decapsulate(bytes(ct_m))


def unsafe_sign_with_raw_context(key: SigningKey, message: bytes, ctx: bytes) -> bytes:
    """Composite signature with an arbitrary ``ctx`` (draft test vectors use the empty one)."""
    return key._sign_ctx(message, bytes(ctx))


def unsafe_verify_with_raw_context(key: VerifyKey, signature: bytes, message: bytes, ctx: bytes) -> None:
    """Composite verification with an arbitrary ``ctx``; raises ``InvalidSignature``."""
    key._verify_ctx(signature, message, bytes(ctx))
