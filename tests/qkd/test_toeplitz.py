"""Toeplitz hashing equals the explicit matrix product over GF(2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import QKDError
from qflare.qkd.toeplitz import toeplitz_hash, toeplitz_seed


def _explicit(seed: np.ndarray, bits: np.ndarray, m: int) -> np.ndarray:
    n = bits.size
    rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    matrix = seed[rows - cols + n - 1].astype(np.int64)  # T[i, j] = seed[i - j + n - 1]
    return (matrix @ bits.astype(np.int64) % 2).astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 600), m=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_hash_equals_explicit_toeplitz_product(n: int, m: int, seed: int) -> None:
    # Prepare (sizes straddle the direct and FFT paths)
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    s = toeplitz_seed(rng, n, m)
    # Execute
    out = toeplitz_hash(s, bits, m)
    # Assert
    assert np.array_equal(out, _explicit(s, bits, m))


def test_hash_is_linear_over_gf2_at_scale() -> None:
    # Prepare
    rng = np.random.default_rng(5)
    n, m = 200_000, 90_000
    x, y = rng.integers(0, 2, n, dtype=np.uint8), rng.integers(0, 2, n, dtype=np.uint8)
    s = toeplitz_seed(rng, n, m)
    # Execute
    hx, hy, hxy = toeplitz_hash(s, x, m), toeplitz_hash(s, y, m), toeplitz_hash(s, x ^ y, m)
    # Assert
    assert np.array_equal(hxy, hx ^ hy)
    assert 0.45 < hx.mean() < 0.55


def test_wrong_seed_length_is_refused() -> None:
    with pytest.raises(QKDError) as info:
        toeplitz_hash(np.zeros(10, np.uint8), np.ones(500, np.uint8), 300)
    assert info.value.reason == "toeplitz_seed"


@pytest.mark.parametrize(("n", "m"), [(200, 100), (5_000, 64), (3_000, 256), (3_000, 257), (4_000, 1_500)])
def test_every_code_path_agrees_with_the_matrix(n: int, m: int) -> None:
    # Prepare: direct (n m <= 2^16), packed rows (m <= 256), FFT (otherwise)
    rng = np.random.default_rng(n + m)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    s = toeplitz_seed(rng, n, m)
    # Execute / Assert
    assert np.array_equal(toeplitz_hash(s, bits, m), _explicit(s, bits, m))
