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
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DeviceRecord", "score", "select_devices"]


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
