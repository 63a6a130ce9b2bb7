"""Device selection that uses what the server knows, with a fairness guarantee.

Uniform sampling ignores that some devices are rarely online, slow, or send stale or useless
updates. :func:`select_devices` scores each candidate from its :class:`DeviceRecord`:

``score = availability * speed * freshness * contribution``, each factor in (0, 1]:

- ``availability``: share of the recent rounds it was active when a round opened;
- ``speed``: ``fastest median round-trip / its median round-trip`` (1 for an unknown device);
- ``freshness``: ``(1 + staleness) ** -0.5`` of its last update (async mode; 0 staleness in sync);
- ``contribution``: share of its recent selections that ended in an accepted update (a device that
  keeps missing deadlines or being refused counts for less), floored at ``min_share``.

Fairness (stated, and tested in ``tests/server/test_selection.py``): first, every candidate not
selected for ``max_wait_rounds`` rounds is selected, longest-waiting first; the remaining slots are
filled by weighted sampling without replacement with probability proportional to
``max(score, min_share)``, so no active device ever has probability 0. Hence while at most ``k``
devices are overdue at once, no active device waits more than ``max_wait_rounds`` rounds; in general
it waits at most ``max_wait_rounds + ceil(n / k)``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["AdaptiveSelector", "DeviceRecord", "score", "select_devices"]


@dataclass(frozen=True)
class DeviceRecord:
    """What the server knows of one active device (from its stored rounds and updates)."""

    device_id: str
    availability: float = 1.0
    median_seconds: float | None = None
    staleness: int = 0
    selected: int = 0  # recent selections
    accepted: int = 0  # of which ended in an accepted update
    rounds_since_selected: int = 1_000_000  # never selected: overdue


def score(record: DeviceRecord, *, fastest_seconds: float | None, min_share: float = 0.05) -> float:
    """The device's selection weight in [min_share, 1]."""
    speed = 1.0
    if record.median_seconds and fastest_seconds:
        speed = min(1.0, fastest_seconds / record.median_seconds)
    freshness = (1.0 + max(0, record.staleness)) ** -0.5
    contribution = max(min_share, record.accepted / record.selected) if record.selected else 1.0
    availability = min(1.0, max(0.0, record.availability))
    return max(min_share, availability * speed * freshness * contribution)


def select_devices(candidates: Sequence[DeviceRecord], k: int, *, seed: str, max_wait_rounds: int = 5,
                   min_share: float = 0.05) -> list[str]:
    """``k`` device ids (sorted) from ``candidates``: overdue devices first, then weighted sampling."""
    if k <= 0 or not candidates:
        return []
    k = min(k, len(candidates))
    overdue = sorted((c for c in candidates if c.rounds_since_selected >= max_wait_rounds),
                     key=lambda c: (-c.rounds_since_selected, c.device_id))
    chosen = [c.device_id for c in overdue[:k]]
    rest = [c for c in candidates if c.device_id not in set(chosen)]
    known = [c.median_seconds for c in candidates if c.median_seconds]
    fastest = min(known) if known else None
    rng = random.Random(seed)
    # Weighted sampling without replacement (Efraimidis & Spirakis, 2006): key u^(1/w), keep the largest.
    keyed = sorted(rest, key=lambda c: -math.log(rng.random() or 1e-300) / score(c, fastest_seconds=fastest,
                                                                                     min_share=min_share))
    chosen += [c.device_id for c in keyed[: k - len(chosen)]]
    return sorted(chosen)


class AdaptiveSelector:
    """The orchestrator's selection hook (``Orchestrator.select``): builds :class:`DeviceRecord` s from the
    last ``window`` rounds in storage and calls :func:`select_devices`.

    Availability is the share of round openings (seen by this process since it started) at which the
    device was active; speed is the median time from a round's opening to the device's accepted
    update; contribution is accepted updates per selection. Staleness is 0 (synchronous rounds).
    """

    def __init__(self, *, window: int = 20, max_wait_rounds: int = 5, min_share: float = 0.05) -> None:
        self.window = window
        self.max_wait_rounds = max_wait_rounds
        self.min_share = min_share
        self._openings = 0
        self._active: dict[str, int] = {}

    def __call__(self, repo: Any, active: Sequence[str], k: int, *, round_id: int, seed: str) -> list[str]:
        self._openings += 1
        for d in active:
            self._active[d] = self._active.get(d, 0) + 1
        selected: dict[str, int] = {}
        accepted: dict[str, int] = {}
        seconds: dict[str, list[float]] = {}
        last: dict[str, int] = {}
        for rid in range(max(1, round_id - self.window), round_id):
            rnd = repo.get_round(rid)
            if rnd is None:
                continue
            for d in rnd.selected:
                selected[d] = selected.get(d, 0) + 1
                last[d] = rid
            for u in repo.round_updates(rid):
                accepted[u.device_id] = accepted.get(u.device_id, 0) + 1
                seconds.setdefault(u.device_id, []).append(u.received_at - rnd.opened_at)
        records = [DeviceRecord(
            device_id=d, availability=self._active.get(d, 0) / self._openings,
            median_seconds=statistics.median(seconds[d]) if d in seconds else None,
            selected=selected.get(d, 0), accepted=accepted.get(d, 0),
            rounds_since_selected=round_id - last[d] if d in last else 1_000_000,
        ) for d in active]
        return select_devices(records, k, seed=seed, max_wait_rounds=self.max_wait_rounds, min_share=self.min_share)
