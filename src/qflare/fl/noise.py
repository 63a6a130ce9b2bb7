"""Gaussian noise for differential privacy from a cryptographic random stream.

NumPy's generators (PCG64, MT19937) are fast and statistically good, but not cryptographic: an
observer who recovers their state from some outputs predicts the rest, and a released noised model
is such an output. Central DP in QFLARE therefore draws its noise from :class:`SecureGaussian`:

- **The stream** is ChaCha20 (RFC 8439, from ``cryptography``) keyed by 256 bits: the key stream
  (ChaCha20 encrypting zero bytes) is the random bit source, read 64 bits at a time. The key comes
  from the operating system's entropy (``secrets``), or from a seed in tests. Nothing is
  hand-rolled: ChaCha20 is the primitive, and the key stream of a stream cipher under a secret key is
  the standard construction of a CSPRNG (it is how Linux's ``getrandom`` and OpenBSD's
  ``arc4random`` work).
- **Uniforms:** the top 53 bits of each 64-bit word give a double ``k * 2**-53`` in ``[0, 1)``,
  every value equally likely (the usual conversion; NumPy's ``random()`` does the same).
- **Normals:** Box-Muller (Box and Muller 1958): ``sqrt(-2 ln(1 - u1)) * (cos, sin)(2 pi u2)``;
  ``1 - u1`` lies in ``(0, 1]``, so the logarithm is finite.
- **Floating point:** a floating-point Gaussian sample has gaps and a bias in its low bits that can
  reveal the value it was added to (Mironov 2012 for the Laplace mechanism; Jin et al. 2022,
  "Are We There Yet? Timing and Floating-Point Attacks on Differential Privacy Systems", for
  Gaussian). Following Holohan and Braghin 2021 ("Secure Random Sampling in Differential Privacy",
  as Opacus's ``secure_mode`` does), each noise value is the sum of four independent samples of
  standard deviation ``std`` divided by two: the sum has standard deviation ``std`` and its
  representation no longer follows one sample's lattice.

What this does *not* give: an exact discrete Gaussian (Canonne, Kamath and Steinke 2020) or a
proof that no floating-point leak remains; docs/privacy.md says so.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

__all__ = ["KEY_BITS", "SUMMANDS", "SecureGaussian"]

KEY_BITS = 256
SUMMANDS = 4  # Holohan and Braghin 2021: sum of 2n samples over sqrt(2n), n = 2
_CHUNK = 1 << 18  # normals per block of work: bounds the temporaries at a few MB whatever the model


class SecureGaussian:
    """Gaussian noise from ChaCha20 keyed by ``key`` (a 256-bit integer; default fresh entropy).

    The same key gives the same noise for the same sequence of draws; a fresh key per round
    (``SecureGaussian()``) is what the DP wrappers use, and the sealed round checkpoint keeps the key
    so a restarted enclave releases the same noised aggregate rather than a second one.
    """

    def __init__(self, key: int | None = None) -> None:
        if key is None:
            key = secrets.randbits(KEY_BITS)
        if not 0 <= key < 1 << KEY_BITS:
            raise ValueError(f"a noise key is an integer in [0, 2**{KEY_BITS})")
        self.key = key
        # ChaCha20 in `cryptography` takes a 16-byte nonce holding the 32-bit block counter first:
        # counter 0, nonce 0. One key serves one stream, so a fixed nonce is safe.
        cipher = Cipher(ChaCha20(key.to_bytes(KEY_BITS // 8, "little"), bytes(16)), mode=None)
        self._stream = cipher.encryptor()

    def uniform(self, count: int) -> np.ndarray:
        """``count`` doubles, uniform in ``[0, 1)`` with 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * count)), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def _standard(self, count: int) -> np.ndarray:
        pairs = (count + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))
        angle = (2.0 * math.pi) * u[pairs:]
        out = np.empty(2 * pairs, dtype=np.float64)
        np.multiply(radius, np.cos(angle), out=out[:pairs])
        np.multiply(radius, np.sin(angle), out=out[pairs:])
        return out[:count]

    def normal(self, std: float, shape: tuple[int, ...] | int = ()) -> np.ndarray:
        """Float64 noise N(0, std^2) of ``shape``, each value the sum of four samples over two."""
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"noise standard deviation must be finite and >= 0, got {std!r}")
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        total = math.prod(dims)
        out = np.empty(total, dtype=np.float64)
        for start in range(0, total, _CHUNK):
            stop = min(total, start + _CHUNK)
            n = stop - start
            summed = self._standard(SUMMANDS * n).reshape(SUMMANDS, n).sum(axis=0)
            np.multiply(summed, std / math.sqrt(SUMMANDS), out=out[start:stop])
        return out.reshape(dims)
