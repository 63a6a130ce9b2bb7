"""Key rate against distance: the simulator, the analytic model and the PLOB bound side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from qflare.errors import ConfigError
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.keyrate import asymptotic_key_rate, plob_bound

__all__ = ["SweepPoint", "key_rate_sweep", "pulses_for"]


@dataclass(frozen=True)
class SweepPoint:
    """One distance of a sweep (rates in secret bits per pulse)."""

    distance_km: float
    pulses: int
    transmittance: float
    plob_bound: float
    model_rate: float
    key_rate: float
    final_key_bits: int
    qber_estimated: float
    aborted: bool
    abort_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pulses_for(channel: Channel, detections: int, max_pulses: int) -> int:
    """Pulses needed for about ``detections`` clicks on ``channel``, capped at ``max_pulses``."""
    p_click = 1.0 - (1.0 - channel.transmittance) * (1.0 - channel.dark_count_prob) ** 2
    if p_click <= 0.0:
        return max_pulses
    return max(1, min(max_pulses, math.ceil(detections / p_click)))


def key_rate_sweep(
    distances_km: Sequence[float],
    *,
    channel: Channel | None = None,
    detections: int = 1_000_000,
    max_pulses: int = 2_000_000_000,
    eavesdrop: float = 0.0,
    seed: int | None = 0,
) -> list[SweepPoint]:
    """Run BB84 at each distance (other channel parameters from ``channel``).

    Each point sends enough pulses for about ``detections`` clicks (at most ``max_pulses``), so
    every point pays a similar finite-size penalty; ``seed + i`` seeds point ``i``.
    """
    if detections < 1 or max_pulses < 1:
        raise ConfigError("detections and max_pulses must be >= 1", reason="invalid_pulses")
    base = channel or Channel()
    points = []
    for i, distance in enumerate(distances_km):
        ch = replace(base, distance_km=float(distance))
        pulses = pulses_for(ch, detections, max_pulses)
        result = run_bb84(pulses, ch, eavesdrop=eavesdrop, seed=None if seed is None else seed + i)
        points.append(
            SweepPoint(
                distance_km=float(distance),
                pulses=pulses,
                transmittance=ch.transmittance,
                plob_bound=plob_bound(ch.transmittance),
                model_rate=asymptotic_key_rate(ch),
                key_rate=result.key_rate,
                final_key_bits=result.final_key_bits,
                qber_estimated=result.qber_estimated,
                aborted=result.aborted,
                abort_reason=result.abort_reason,
            )
        )
    return points
