"""Toeplitz hashing over GF(2): privacy amplification and the error-correction check.

A random ``m x n`` binary Toeplitz matrix is fixed by ``n + m - 1`` seed bits; the family is
2-universal (two different inputs collide with probability ``2**-m``), which is what the leftover
hash lemma needs for privacy amplification and what makes it a sound equality check after error
correction. ``T @ x`` is a convolution, computed with one real FFT in ``O((n + m) log(n + m))``;
short outputs (``m <= 256``, e.g. the 64-bit check) use packed bit operations, ``O(m n / 8)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qflare.errors import QKDError

__all__ = ["toeplitz_hash", "toeplitz_seed"]

Bits = NDArray[np.uint8]
_PACKED_MAX_ROWS = 256


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
    if m <= _PACKED_MAX_ROWS:
        return _packed_rows(seed, bits, m)
    return _fft(seed, bits, m)


def _packed_rows(seed: Bits, bits: Bits, m: int) -> Bits:
    """Few output bits (e.g. the 64-bit EC check): one packed AND + popcount per row.

    Row ``i`` is ``seed[i : i + n]`` against ``bits`` reversed. The seed is packed at each of the 8
    bit offsets once, so every row is a byte-aligned slice.
    """
    n = int(bits.size)
    nbytes = (n + 7) // 8
    reversed_bits = np.packbits(bits[::-1])  # zero padding at the end masks the window's tail
    shifted = [np.packbits(seed[k:]) for k in range(min(8, m))]
    out = np.empty(m, dtype=np.uint8)
    for i in range(m):
        window = shifted[i % 8][i // 8 : i // 8 + nbytes]
        out[i] = int(np.bitwise_count(window & reversed_bits).sum()) & 1
    return out


def _fft(seed: Bits, bits: Bits, m: int) -> Bits:
    n = int(bits.size)
    # A cyclic convolution of length >= len(seed) = n + m - 1 wraps only into indices < n - 1,
    # which are not read.
    size = 1 << (int(seed.size) - 1).bit_length()
    product = np.fft.rfft(seed.astype(np.float64), size) * np.fft.rfft(bits.astype(np.float64), size)
    conv = np.fft.irfft(product, size)
    window = conv[n - 1 : n - 1 + m]
    counts = np.rint(window)
    # Values are integers <= n; float64 FFT error is ~1e-9 at n = 1e7. Refuse rather than guess.
    if float(np.max(np.abs(window - counts))) > 0.25:
        raise QKDError("Toeplitz FFT lost precision; input too long", reason="toeplitz_precision")
    return (counts.astype(np.int64) & 1).astype(np.uint8)
