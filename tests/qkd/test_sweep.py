"""Key rate against distance: falls with distance and never exceeds the PLOB bound."""

from __future__ import annotations

import pytest

from qflare.qkd.channel import Channel
from qflare.qkd.keyrate import plob_bound
from qflare.qkd.sweep import key_rate_sweep, pulses_for


@pytest.fixture(scope="module")
def points():  # type: ignore[no-untyped-def]
    return key_rate_sweep(range(0, 301, 25), detections=60_000, max_pulses=60_000_000, seed=1)


def test_key_rate_stays_below_plob_at_every_distance(points) -> None:  # type: ignore[no-untyped-def]
    for p in points:
        assert p.plob_bound == pytest.approx(plob_bound(p.transmittance))
        assert p.key_rate < p.plob_bound
        assert p.model_rate < p.plob_bound


def test_key_rate_falls_with_distance_to_zero(points) -> None:  # type: ignore[no-untyped-def]
    # Assert: strictly decreasing while a key is produced, then no key at all
    rates = [p.key_rate for p in points]
    positive = [r for r in rates if r > 0]
    assert len(positive) >= 4
    assert all(a > b for a, b in zip(positive, positive[1:], strict=False))
    first_zero = rates.index(0.0)
    assert all(r == 0.0 for r in rates[first_zero:])
    assert points[-1].aborted


def test_model_rate_falls_with_distance(points) -> None:  # type: ignore[no-untyped-def]
    model = [p.model_rate for p in points]
    assert all(a >= b for a, b in zip(model, model[1:], strict=False))


def test_pulses_cover_the_target_detections() -> None:
    channel = Channel(distance_km=50.0)
    pulses = pulses_for(channel, 10_000, 10**9)
    assert pulses * channel.transmittance == pytest.approx(10_000, rel=0.01)
    assert pulses_for(Channel(distance_km=500.0), 10_000, 1000) == 1000
