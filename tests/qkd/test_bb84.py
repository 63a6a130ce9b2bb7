"""BB84 end to end: the figures the issue asks to show."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError, QKDError
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel


def test_no_eavesdropper_at_10km_gives_misalignment_qber_and_a_key() -> None:
    # Prepare
    channel = Channel(distance_km=10.0, misalignment=0.02)
    # Execute
    result = run_bb84(2_000_000, channel, seed=1)
    # Assert
    assert not result.aborted and result.abort_reason is None
    assert result.qber_true == pytest.approx(0.02, abs=0.002)
    assert result.qber_estimated == pytest.approx(0.02, abs=0.006)
    assert result.final_key_bits > 0
    assert len(result.key) * 8 == result.final_key_bits
    assert result.require_key() == result.key


def test_full_intercept_resend_gives_25_percent_and_aborts() -> None:
    # Prepare
    channel = Channel(distance_km=10.0, misalignment=0.0)
    # Execute
    result = run_bb84(2_000_000, channel, eavesdrop=1.0, seed=2)
    # Assert
    assert result.qber_true == pytest.approx(0.25, abs=0.02)
    assert result.qber_estimated == pytest.approx(0.25, abs=0.02)
    assert result.aborted and result.abort_reason == "qber_above_threshold"
    assert result.final_key_bits == 0 and result.key == b""
    with pytest.raises(QKDError) as info:
        result.require_key()
    assert info.value.reason == "qber_abort"


def test_stage_counts_are_consistent() -> None:
    # Execute
    r = run_bb84(1_000_000, Channel(distance_km=20.0), seed=3)
    # Assert: sifting halves the detections; disclosed sample is removed; key < what was left - leak
    assert r.pulses == 1_000_000
    assert r.sifted_bits == pytest.approx(r.detected / 2, rel=0.02)
    assert r.sample_bits == round(r.sifted_bits * 0.1)
    assert 0 < r.final_key_bits < r.sifted_bits - r.sample_bits - r.leaked_bits
    assert r.final_key_bits % 8 == 0
    assert r.leaked_bits > r.corrected_errors > 0


def test_same_seed_same_key_other_seed_other_key() -> None:
    # Execute
    first = run_bb84(300_000, seed=42)
    again = run_bb84(300_000, seed=42)
    other = run_bb84(300_000, seed=43)
    # Assert
    assert first.key == again.key and first.summary() == again.summary()
    assert other.key != first.key


def test_partial_attack_raises_qber_and_shrinks_the_key() -> None:
    # Execute
    clean = run_bb84(1_000_000, seed=5)
    attacked = run_bb84(1_000_000, eavesdrop=0.2, seed=5)
    # Assert: +5% errors, more leakage, less key
    assert attacked.qber_true == pytest.approx(clean.qber_true + 0.2 * 0.245, abs=0.006)
    assert attacked.final_key_bits < clean.final_key_bits


def test_too_few_pulses_give_no_key() -> None:
    # Execute
    result = run_bb84(5_000, seed=6)
    # Assert
    assert result.aborted and result.abort_reason == "no_secret_key"
    with pytest.raises(QKDError) as info:
        result.require_key()
    assert info.value.reason == "no_secret_key"


def test_summary_holds_no_key_material() -> None:
    result = run_bb84(300_000, seed=7)
    assert "key" not in result.summary()
    assert result.key.hex() not in repr(result)


@pytest.mark.parametrize(
    "kwargs", [{"sample_fraction": 0.0}, {"qber_abort": 0.6}, {"eps_sec": 2.0}, {"cascade_passes": 0}]
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        run_bb84(1000, seed=0, **kwargs)  # type: ignore[arg-type]
