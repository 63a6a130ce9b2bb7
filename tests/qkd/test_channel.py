"""The quantum phase: loss, dark counts, misalignment, intercept-resend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.qkd.channel import Channel, bernoulli_indices, transmit


def test_transmittance_is_fibre_loss_times_detector_efficiency() -> None:
    # Prepare
    channel = Channel(distance_km=50.0, fibre_loss_db_per_km=0.2, detector_efficiency=0.5)
    # Execute
    eta = channel.transmittance
    # Assert: 10 dB of fibre loss
    assert eta == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("p", [1e-4, 0.05, 0.19, 0.35, 0.9])
def test_bernoulli_indices_have_the_right_rate_and_are_sorted_unique(p: float) -> None:
    # Prepare
    rng = np.random.default_rng(4)
    n = 400_000
    # Execute
    idx = bernoulli_indices(rng, n, p)
    # Assert: count within 5 sigma, valid strictly increasing positions
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(idx.size - n * p) < 5 * sigma + 1
    assert idx.size == 0 or (idx[0] >= 0 and idx[-1] < n)
    assert np.all(np.diff(idx) > 0)


def test_detection_rate_matches_transmittance_plus_dark_counts() -> None:
    # Prepare
    channel = Channel(distance_km=25.0, dark_count_prob=1e-4)
    n = 2_000_000
    # Execute
    det = transmit(n, channel, rng=np.random.default_rng(1))
    # Assert
    expected = 1 - (1 - channel.transmittance) * (1 - channel.dark_count_prob) ** 2
    assert det.detected / n == pytest.approx(expected, rel=0.02)


def test_dark_counts_alone_give_fifty_percent_errors() -> None:
    # Prepare: no photon ever arrives
    channel = Channel(distance_km=0.0, detector_efficiency=0.0, dark_count_prob=0.01)
    # Execute
    det = transmit(1_000_000, channel, rng=np.random.default_rng(2))
    sift = det.alice_bases == det.bob_bases
    qber = float(np.mean(det.alice_bits[sift] != det.bob_bits[sift]))
    # Assert
    assert det.detected > 10_000
    assert qber == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0.02), (0.5, 0.02 + 0.5 * 0.24), (1.0, 0.25 + 0.01)])
def test_intercept_resend_adds_a_quarter_of_the_attacked_fraction(fraction: float, expected: float) -> None:
    # Prepare: e = e_mis + f * (1/4 - e_mis/2) for single photons
    channel = Channel(distance_km=5.0, misalignment=0.02, dark_count_prob=0.0)
    # Execute
    det = transmit(1_500_000, channel, eavesdrop=fraction, rng=np.random.default_rng(3))
    sift = det.alice_bases == det.bob_bases
    qber = float(np.mean(det.alice_bits[sift] != det.bob_bits[sift]))
    # Assert
    assert qber == pytest.approx(expected, abs=0.004)


def test_same_seed_same_detections() -> None:
    # Prepare
    channel = Channel()
    # Execute
    first = transmit(300_000, channel, eavesdrop=0.3, rng=np.random.default_rng(9))
    second = transmit(300_000, channel, eavesdrop=0.3, rng=np.random.default_rng(9))
    # Assert
    assert np.array_equal(first.alice_bits, second.alice_bits)
    assert np.array_equal(first.bob_bits, second.bob_bits)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distance_km": -1.0},
        {"distance_km": float("nan")},
        {"detector_efficiency": 1.5},
        {"dark_count_prob": -0.1},
        {"misalignment": 0.6},
    ],
)
def test_impossible_channel_is_refused(kwargs: dict[str, float]) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError):
        Channel(**kwargs)


def test_eavesdrop_fraction_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ConfigError):
        transmit(10, Channel(), eavesdrop=1.5, rng=np.random.default_rng(0))
