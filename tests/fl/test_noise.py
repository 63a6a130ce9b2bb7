"""The DP noise sampler: a ChaCha20 key stream (RFC 8439 vector), Gaussian moments, keys, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from qflare.fl.noise import SUMMANDS, SecureGaussian

# RFC 8439 appendix A.1, test vector #1: key 0, nonce 0, block counter 0; the first 8 key-stream bytes.
RFC8439_A1_FIRST_WORD = bytes.fromhex("76b8e0ada0f13d90")


def test_the_bit_source_is_the_chacha20_key_stream_of_rfc8439() -> None:
    u = SecureGaussian(0).uniform(1)
    expected = (int.from_bytes(RFC8439_A1_FIRST_WORD, "little") >> 11) * 2.0 ** -53
    assert u[0] == expected


def test_uniforms_cover_the_unit_interval_evenly() -> None:
    u = SecureGaussian(1).uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


@pytest.mark.parametrize("std", [1e-3, 1.0, 250.0])
def test_noise_is_gaussian_with_the_asked_deviation(std: float) -> None:
    x = SecureGaussian(2).normal(std, (400, 500))
    assert x.shape == (400, 500) and x.dtype == np.float64
    assert abs(x.mean()) < 5 * std / np.sqrt(x.size)
    assert x.std() == pytest.approx(std, rel=0.01)
    assert stats.kstest(x.ravel() / std, "norm").pvalue > 1e-4


def test_each_value_sums_four_samples_so_odd_sizes_and_scalars_work() -> None:
    assert SUMMANDS == 4
    g = SecureGaussian(3)
    assert g.normal(1.0).shape == ()
    assert g.normal(1.0, 7).shape == (7,)
    assert np.all(g.normal(0.0, 5) == 0.0)


def test_a_key_gives_its_own_stream_and_the_same_key_the_same_noise() -> None:
    a, b = SecureGaussian(5).normal(1.0, 1000), SecureGaussian(5).normal(1.0, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, SecureGaussian(6).normal(1.0, 1000))
    fresh = [SecureGaussian() for _ in range(2)]
    assert fresh[0].key != fresh[1].key and fresh[0].key.bit_length() > 128


def test_draws_across_block_boundaries_continue_the_stream() -> None:
    # A tensor larger than one block of work draws more than one chunk; two tensors in a row differ.
    g = SecureGaussian(7)
    big = g.normal(1.0, 600_000)
    assert big.std() == pytest.approx(1.0, rel=0.01)
    assert not np.array_equal(g.normal(1.0, 10), big[:10])


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_a_deviation_that_makes_no_sense_is_refused(std: float) -> None:
    with pytest.raises(ValueError, match="standard deviation"):
        SecureGaussian(0).normal(std, 3)


@pytest.mark.parametrize("key", [-1, 1 << 256])
def test_a_key_outside_256_bits_is_refused(key: int) -> None:
    with pytest.raises(ValueError, match="2\\*\\*256"):
        SecureGaussian(key)


def test_a_round_key_survives_the_sealed_checkpoints_float64_encoding() -> None:
    from qflare.fl.privacy import _seed_from_array, _seed_to_array

    key = SecureGaussian().key
    assert _seed_from_array(_seed_to_array(key)) == key
    # a checkpoint written before the 256-bit keys held four 16-bit pieces
    assert _seed_from_array(np.array([1.0, 2.0, 0.0, 0.0])) == 1 + (2 << 16)
