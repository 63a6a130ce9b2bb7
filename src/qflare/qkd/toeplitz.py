"""Toeplitz hashing over GF(2): privacy amplification and the error-correction check.

A random ``m x n`` binary Toeplitz matrix is fixed by ``n + m - 1`` seed bits; the family is
2-universal (two different inputs collide with probability ``2**-m``), which is what the leftover
hash lemma needs for privacy amplification and what makes it a sound equality check after error
correction. ``T @ x`` is a convolution, computed with one real FFT in ``O((n + m) log(n + m))``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qflare.errors import QKDError

__all__ = ["toeplitz_hash", "toeplitz_seed"]

Bits = NDArray[np.uint8]


def toeplitz_seed(rng: np.random.Generator, n: int, m: int) -> Bits:
    """The ``n + m - 1`` random bits that define an ``m x n`` Toeplitz matrix."""
    return rng.integers(0, 2, size=max(n + m - 1, 0), dtype=np.uint8)


def toeplitz_hash(seed: Bits, bits: Bits, m: int) -> Bits:
    """``T @ bits mod 2`` with ``T[i, j] = seed[i - j + n - 1]`` (``n = len(bits)``), as ``m`` bits.

    Raises
    ------
    QKDError
        ``reason="toeplitz_seed"`` if the seed has the wrong length.
    """
    n = int(bits.size)
    if m <= 0 or n == 0:
        return np.zeros(max(m, 0), dtype=np.uint8)
    if seed.size != n + m - 1:
        raise QKDError(f"Toeplitz seed needs {n + m - 1} bits, got {seed.size}", reason="toeplitz_seed")
    if n * m <= 1 << 16:  # tiny: direct sum is exact and cheaper than an FFT
        idx = np.arange(m)[:, None] - np.arange(n)[None, :] + (n - 1)
        return ((seed[idx].astype(np.int64) @ bits.astype(np.int64)) & 1).astype(np.uint8)
    size = 1 << int(n + seed.size - 1).bit_length()
    conv = np.fft.irfft(np.fft.rfft(seed.astype(np.float64), size) * np.fft.rfft(bits.astype(np.float64), size), size)
    window = conv[n - 1 : n - 1 + m]
    counts = np.rint(window)
    # Values are integers <= n; float64 FFT error is ~1e-9 at n = 1e7. Refuse rather than guess.
    if float(np.max(np.abs(window - counts))) > 0.25:
        raise QKDError("Toeplitz FFT lost precision; input too long", reason="toeplitz_precision")
    return (counts.astype(np.int64) & 1).astype(np.uint8)
