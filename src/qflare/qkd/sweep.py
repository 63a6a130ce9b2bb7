"""Key rate against distance: simulated BB84 per source, the analytic [LMC05] curves and the PLOB bound."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from qflare.errors import ConfigError
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.decoy import (
    LinkParams,
    max_distance,
    optimal_rate,
    rate_decoy_infinite,
    rate_no_decoy,
    rate_single_photon,
    rate_vacuum_weak,
)
from qflare.qkd.keyrate import asymptotic_key_rate, plob_bound
from qflare.qkd.source import Source, SourceKind

__all__ = ["AnalyticCurves", "SweepPoint", "analytic_curves", "key_rate_sweep", "link_params", "pulses_for"]


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
    source: str = SourceKind.SINGLE_PHOTON.value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def link_params(channel: Channel, f_ec: float = 1.22) -> LinkParams:
    """The [LMC05] parameters of ``channel`` (``Y0`` is both detectors' dark counts)."""
    return LinkParams(
        alpha_db_per_km=channel.fibre_loss_db_per_km,
        eta_bob=channel.detector_efficiency,
        y0=1.0 - (1.0 - channel.dark_count_prob) ** 2,
        e_detector=channel.misalignment,
        f_ec=f_ec,
    )


def _click_probability(channel: Channel, source: Source) -> float:
    eta = channel.transmittance
    dark = 1.0 - (1.0 - channel.dark_count_prob) ** 2
    if source.kind is SourceKind.SINGLE_PHOTON:
        return 1.0 - (1.0 - eta) * (1.0 - dark)
    return sum(p * (1.0 - (1.0 - dark) * math.exp(-lam * eta)) for _, lam, p in source.classes)


def pulses_for(channel: Channel, detections: int, max_pulses: int, source: Source | None = None) -> int:
    """Pulses needed for about ``detections`` clicks on ``channel``, capped at ``max_pulses``."""
    p_click = _click_probability(channel, source or Source())
    if p_click <= 0.0:
        return max_pulses
    return max(1, min(max_pulses, math.ceil(detections / p_click)))


def _model_rate(channel: Channel, source: Source) -> float:
    if source.kind is SourceKind.SINGLE_PHOTON:
        return asymptotic_key_rate(channel)
    p = link_params(channel)
    if source.kind is SourceKind.DECOY:
        return rate_vacuum_weak(p, channel.distance_km, source.signal, source.decoy)
    return rate_no_decoy(p, channel.distance_km, source.signal)


def key_rate_sweep(
    distances_km: Sequence[float],
    *,
    channel: Channel | None = None,
    source: Source | None = None,
    detections: int = 1_000_000,
    max_pulses: int = 2_000_000_000,
    eavesdrop: float = 0.0,
    seed: int | None = 0,
) -> list[SweepPoint]:
    """Run BB84 at each distance (other channel parameters from ``channel``).

    Each point sends enough pulses for about ``detections`` clicks (at most ``max_pulses``), so
    every point pays a similar finite-size penalty; ``seed + i`` seeds point ``i``. ``model_rate``
    is the asymptotic rate of the same source (Cascade model for single photons, [LMC05] with
    ``f = 1.22`` for weak pulses, at the source's own intensities).
    """
    if detections < 1 or max_pulses < 1:
        raise ConfigError("detections and max_pulses must be >= 1", reason="invalid_pulses")
    base = channel or Channel()
    source = source or Source()
    points = []
    for i, distance in enumerate(distances_km):
        ch = replace(base, distance_km=float(distance))
        pulses = pulses_for(ch, detections, max_pulses, source)
        result = run_bb84(pulses, ch, source=source, eavesdrop=eavesdrop, seed=None if seed is None else seed + i)
        points.append(
            SweepPoint(
                distance_km=float(distance),
                pulses=pulses,
                transmittance=ch.transmittance,
                plob_bound=plob_bound(ch.transmittance),
                model_rate=_model_rate(ch, source),
                key_rate=result.key_rate,
                final_key_bits=result.final_key_bits,
                qber_estimated=result.qber_estimated,
                aborted=result.aborted,
                abort_reason=result.abort_reason,
                source=source.kind.value,
            )
        )
    return points


@dataclass(frozen=True)
class AnalyticCurves:
    """Asymptotic rates per pulse of [LMC05] (signal intensity optimised per distance) and PLOB."""

    distances_km: list[float]
    plob: list[float]
    single_photon: list[float]
    decoy_infinite: list[float]
    vacuum_weak: list[float]
    no_decoy: list[float]
    max_distance_km: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def analytic_curves(p: LinkParams, distances_km: Sequence[float], *, nu: float = 0.05) -> AnalyticCurves:
    """The four [LMC05]-style curves on ``p`` and where each ends (``nu``: the weak decoy)."""

    def decoy(km: float) -> float:
        return optimal_rate(lambda mu: rate_decoy_infinite(p, km, mu))[0]

    def vac(km: float) -> float:
        return optimal_rate(lambda mu: rate_vacuum_weak(p, km, mu, nu), low=nu * 1.01)[0]

    def gllp(km: float) -> float:
        return optimal_rate(lambda mu: rate_no_decoy(p, km, mu))[0]

    def single(km: float) -> float:
        return rate_single_photon(p, km)

    d = [float(x) for x in distances_km]
    return AnalyticCurves(
        distances_km=d,
        plob=[p.plob(x) for x in d],
        single_photon=[single(x) for x in d],
        decoy_infinite=[decoy(x) for x in d],
        vacuum_weak=[vac(x) for x in d],
        no_decoy=[gllp(x) for x in d],
        max_distance_km={
            "single_photon": max_distance(single),
            "decoy_infinite": max_distance(decoy),
            "vacuum_weak": max_distance(vac),
            "no_decoy": max_distance(gllp),
        },
    )
