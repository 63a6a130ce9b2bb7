"""Weak coherent pulses, decoy states, GLLP, the PNS attack, and the [LMC05] curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qflare.errors import ConfigError, QKDError
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.decoy import (
    GYS,
    max_distance,
    optimal_rate,
    p_multi,
    rate_decoy_infinite,
    rate_no_decoy,
    rate_single_photon,
    rate_vacuum_weak,
    vacuum_weak_bounds,
)
from qflare.qkd.source import Source, SourceKind
from qflare.qkd.wcp import transmit_pulses

DECOY = Source.decoy_state(0.5, 0.1, p_signal=0.7, p_decoy=0.2, p_vacuum=0.1)


def _sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


# --- the pulse model ------------------------------------------------------------------------------------


def test_honest_gains_and_multi_photon_share_follow_poisson() -> None:
    # Prepare
    channel = Channel(distance_km=20.0)
    eta = channel.transmittance
    # Execute
    det = transmit_pulses(20_000_000, channel, DECOY, rng=np.random.default_rng(1))
    # Assert: Q_k = 1 - (1 - Y0) e^(-k eta), and the multi-photon share of clicks is exact Poisson thinning
    y0 = 1.0 - (1.0 - channel.dark_count_prob) ** 2
    for index, (_, lam, _) in enumerate(DECOY.classes):
        n = det.pulses_by_class[index]
        expected = 1.0 - (1.0 - y0) * math.exp(-lam * eta)
        gain = np.count_nonzero(det.intensity == index) / n
        assert gain == pytest.approx(expected, abs=5 * _sigma(expected, n))
    signal = det.intensity == 0
    share = float(np.mean(det.multi_photon[signal]))
    mu = DECOY.signal
    # P(n >= 2 | click) = 1 - P(n = 1 and it clicked) / P(click)
    expected_share = 1.0 - mu * math.exp(-mu) * eta / (1.0 - math.exp(-mu * eta))
    assert share == pytest.approx(expected_share, abs=5 * _sigma(expected_share, int(signal.sum())))
    assert not det.eve_knows.any()


def test_pns_attack_keeps_the_signal_gain_but_not_the_decoy_gain() -> None:
    # Prepare
    channel = Channel(distance_km=40.0)
    # Execute
    honest = transmit_pulses(20_000_000, channel, DECOY, rng=np.random.default_rng(2))
    attacked = transmit_pulses(20_000_000, channel, DECOY, pns=True, rng=np.random.default_rng(2))

    def gain(det: object, index: int) -> float:
        return np.count_nonzero(det.intensity == index) / det.pulses_by_class[index]  # type: ignore[attr-defined]

    # Assert: Eve matches the signal gain; the weak decoy, poorer in multi-photon pulses, loses most
    assert gain(attacked, 0) == pytest.approx(gain(honest, 0), rel=0.02)
    assert gain(attacked, 1) < 0.5 * gain(honest, 1)
    assert attacked.eve_knows[attacked.intensity == 0].mean() > 0.9


# --- BB84 with weak pulses --------------------------------------------------------------------------------


def test_decoy_link_gives_a_key_with_a_sound_single_photon_estimate() -> None:
    # Execute
    result = run_bb84(20_000_000, Channel(distance_km=10.0), source=DECOY, seed=3)
    # Assert
    assert not result.aborted and result.final_key_bits > 0
    est = result.estimates
    eta = Channel(distance_km=10.0).transmittance
    assert 0.0 < est["y1_lower"] <= eta / 2  # sifted Y1 is eta/2 on the honest channel
    assert est["y1_lower"] > 0.6 * eta / 2
    true_single = result.sifted_bits - result.sample_bits - result.multi_photon_key_bits
    assert est["single_photon_bits_lower"] <= true_single
    assert est["e1_upper"] >= 0.01  # at least the misalignment
    assert result.summary()["source"] == "decoy" and result.eve_known_bits == 0


def test_pns_with_decoys_is_detected_and_no_key_is_made() -> None:
    # Execute
    result = run_bb84(20_000_000, Channel(distance_km=10.0), source=DECOY, pns=True, seed=3)
    # Assert: the QBER looks honest, but the decoy yields give Y1^L <= 0 -> abort
    assert result.qber_estimated < 0.02
    assert result.aborted and result.abort_reason == "decoy_bound_undefined"
    assert result.estimates["y1_lower"] <= 0.0 and result.key == b""
    assert result.eve_key_info_bits == 0
    with pytest.raises(QKDError) as info:
        result.require_key()
    assert info.value.reason == "decoy_abort"


def test_pns_without_decoys_goes_unnoticed_and_gllp_is_what_saves_the_key() -> None:
    # Prepare: weak pulses, no decoys, GLLP key length
    source = Source.weak_coherent(0.1)
    # Execute
    honest = run_bb84(20_000_000, Channel(distance_km=10.0), source=source, seed=4)
    attacked = run_bb84(20_000_000, Channel(distance_km=10.0), source=source, pns=True, seed=4)
    # Assert: nothing distinguishes the attacked run; Eve knows every multi-photon bit, and GLLP's
    # assumption that all of them are insecure leaves her nothing of the final key
    assert not attacked.aborted and attacked.final_key_bits > 0
    assert attacked.qber_estimated == pytest.approx(honest.qber_estimated, abs=0.005)
    assert attacked.detected == pytest.approx(honest.detected, rel=0.02)
    assert attacked.eve_known_bits > 0.2 * (attacked.sifted_bits - attacked.sample_bits)
    assert attacked.eve_key_info_bits == 0


def test_pns_against_a_link_that_treats_weak_pulses_as_single_photons_compromises_the_key() -> None:
    # Execute: mu = 0.5 over 50 km, key length as if single photons (what no-decoy links used to do)
    result = run_bb84(
        100_000_000, Channel(distance_km=50.0), source=Source.weak_coherent(0.5), pns=True, seed=5,
        unsafe_assume_single_photons=True,
    )  # fmt: skip
    # Assert: a key, a normal QBER; Eve knows every key bit but the few dark counts, so most of the
    # final key is determined by what she holds
    assert not result.aborted and result.final_key_bits > 0
    assert result.qber_estimated < 0.03
    assert result.eve_known_bits > 0.999 * (result.sifted_bits - result.sample_bits)
    assert result.eve_key_info_bits > 0.5 * result.final_key_bits


def test_without_decoys_the_rate_falls_to_gllp() -> None:
    # Execute: the same channel, mu = 0.5 for both; GLLP must assume all multi-photon pulses insecure
    channel = Channel(distance_km=20.0)
    decoy = run_bb84(20_000_000, channel, source=DECOY, seed=6)
    no_decoy = run_bb84(20_000_000, channel, source=Source.weak_coherent(0.5), seed=6)
    # Assert
    assert decoy.final_key_bits > 0
    assert no_decoy.aborted and no_decoy.abort_reason == "no_secret_key"
    assert no_decoy.estimates["multi_photon_fraction_upper"] == 1.0


# --- the analytic curves: [LMC05] with the GYS parameters -------------------------------------------------


def test_lmc05_gys_maximum_distances() -> None:
    # Execute
    decoy = max_distance(lambda km: optimal_rate(lambda mu: rate_decoy_infinite(GYS, km, mu))[0])
    vacuum_weak = max_distance(lambda km: optimal_rate(lambda mu: rate_vacuum_weak(GYS, km, mu))[0])
    no_decoy = max_distance(lambda km: optimal_rate(lambda mu: rate_no_decoy(GYS, km, mu))[0])
    single = max_distance(lambda km: rate_single_photon(GYS, km))
    # Assert: [LMC05] reports ~142 km for decoy states with GYS; vacuum + weak decoy gets close
    assert decoy == pytest.approx(142.0, abs=1.0)
    assert decoy - 3.0 < vacuum_weak < decoy
    assert 30.0 < no_decoy < 45.0
    assert single > decoy


def test_lmc05_optimal_signal_intensity_is_about_half_a_photon() -> None:
    _, mu = optimal_rate(lambda m: rate_decoy_infinite(GYS, 50.0, m))
    assert mu == pytest.approx(0.48, abs=0.03)


@pytest.mark.parametrize("km", [0.0, 40.0, 100.0])
def test_rates_are_ordered_and_below_plob(km: float) -> None:
    single = rate_single_photon(GYS, km)
    decoy = optimal_rate(lambda mu: rate_decoy_infinite(GYS, km, mu))[0]
    no_decoy = optimal_rate(lambda mu: rate_no_decoy(GYS, km, mu))[0]
    assert no_decoy <= decoy < single < GYS.plob(km)


def test_vacuum_weak_bounds_recover_the_true_yield_on_the_model_channel() -> None:
    # Prepare: model gains of a 30 km GYS link
    eta = GYS.eta(30.0)
    mu, nu = 0.48, 0.05
    q = lambda k: GYS.y0 + 1.0 - math.exp(-eta * k)  # noqa: E731
    eq_nu = 0.5 * GYS.y0 + GYS.e_detector * (1.0 - math.exp(-eta * nu))
    # Execute
    bounds = vacuum_weak_bounds(mu, nu, q(mu), q(nu), eq_nu, GYS.y0)
    # Assert: a lower bound within 10% of Y1 = Y0 + eta, and an upper bound on e1
    assert 0.9 * (GYS.y0 + eta) < bounds.y1_lower <= GYS.y0 + eta
    assert bounds.e1_upper >= (0.5 * GYS.y0 + GYS.e_detector * eta) / (GYS.y0 + eta)


def test_p_multi() -> None:
    assert p_multi(0.5) == pytest.approx(1 - math.exp(-0.5) * 1.5)
    assert p_multi(1e-9) == pytest.approx(0.0, abs=1e-15)


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, -0.1, 1.2, math.nan, math.inf])
def test_signal_mean_photon_number_outside_0_1_is_refused(mu: float) -> None:
    with pytest.raises(ConfigError) as info:
        Source.weak_coherent(mu)
    assert "signal mean photon number mu" in info.value.message
    assert info.value.reason == "invalid_source"


@pytest.mark.parametrize(("mu", "nu"), [(0.5, 0.5), (0.3, 0.6), (0.5, 0.0), (0.5, 1.5)])
def test_decoy_not_below_signal_is_refused(mu: float, nu: float) -> None:
    with pytest.raises(ConfigError) as info:
        Source.decoy_state(mu, nu)
    assert "decoy mean photon number nu" in info.value.message


@pytest.mark.parametrize(
    ("probs", "name"),
    [
        ((0.9, 0.1, 0.0), "p_vacuum"),
        ((1.0, 0.0, 0.0), "p_signal"),
        ((0.5, 0.2, 0.2), "sum"),
        ((0.8, 0.0, 0.2), "p_decoy"),
    ],
)
def test_intensity_choices_that_leave_the_decoy_bounds_undefined_are_refused(
    probs: tuple[float, float, float], name: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Source.decoy_state(0.5, 0.1, p_signal=probs[0], p_decoy=probs[1], p_vacuum=probs[2])
    assert name in info.value.message or (name == "sum" and "must be 1" in info.value.message)


def test_bounds_with_nu_not_below_mu_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        vacuum_weak_bounds(0.2, 0.2, 1e-3, 1e-3, 1e-5, 1e-6)
    assert "nu=0.2" in info.value.message


def test_unknown_source_kind_and_pns_on_single_photons_are_refused() -> None:
    with pytest.raises(ConfigError):
        Source(kind="laser")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        run_bb84(1000, pns=True)
    assert "weak-coherent or decoy" in info.value.message
    assert Source().kind is SourceKind.SINGLE_PHOTON
