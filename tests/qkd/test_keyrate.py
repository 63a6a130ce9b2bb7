"""Entropy, the finite-size key length and the PLOB bound."""

from __future__ import annotations

import math

import pytest

from qflare.qkd.channel import Channel
from qflare.qkd.keyrate import (
    asymptotic_key_rate,
    binary_entropy,
    finite_size_deviation,
    plob_bound,
    secret_key_length,
)


def test_binary_entropy_known_values() -> None:
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.11) == pytest.approx(0.49992, abs=1e-4)
    assert binary_entropy(0.7) == 1.0  # capped: no key beyond 50% errors


def test_finite_size_deviation_shrinks_with_more_samples() -> None:
    assert finite_size_deviation(10**6, 10**5, 1e-10) < finite_size_deviation(10**5, 10**4, 1e-10)
    assert finite_size_deviation(0, 10, 1e-10) == math.inf


def test_key_length_falls_with_leakage_and_error_rate() -> None:
    # Prepare
    base = secret_key_length(100_000, 10_000, 0.01, 10_000, eps_sec=1e-10, eps_cor=2**-64)
    # Execute / Assert
    assert 0 < base < 100_000
    assert secret_key_length(100_000, 10_000, 0.01, 20_000, eps_sec=1e-10, eps_cor=2**-64) == base - 10_000
    assert secret_key_length(100_000, 10_000, 0.05, 10_000, eps_sec=1e-10, eps_cor=2**-64) < base
    assert secret_key_length(1_000, 100, 0.01, 100, eps_sec=1e-10, eps_cor=2**-64) <= 0


def test_plob_bound() -> None:
    assert plob_bound(0.5) == pytest.approx(1.0)
    assert plob_bound(1e-3) == pytest.approx(1e-3 / math.log(2), rel=1e-3)
    assert plob_bound(1.0) == math.inf


@pytest.mark.parametrize("km", [0, 25, 50, 100, 150, 200, 250])
def test_asymptotic_model_stays_below_plob(km: float) -> None:
    channel = Channel(distance_km=km)
    assert asymptotic_key_rate(channel) < plob_bound(channel.transmittance)
