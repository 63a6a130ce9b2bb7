"""Reputation and quarantine: a device whose updates keep being refused or flagged is no longer selected.

A *strike* is a round in which the device's update was refused by validation (a bad norm, a
non-finite value, a wrong shape, an over-cap ``num_examples``) or flagged by the aggregation rule
(:attr:`qflare.fl.robust.RuleOutcome.flagged`: excluded by Krum, clipped by norm-bound, rarely kept by
the median, ...; bounded FedAvg, the default, flags a claim over its cap, a step far above the clip bound,
a step opposed to the round's median step and an output layer that disagrees with the others' classes,
not a merely clipped step). A device with strikes in ``threshold`` distinct rounds
among the last ``window`` rounds (``reputation:`` in ``global_config.yaml``, default 3 of 5) is
quarantined: its status becomes ``quarantined``, so :meth:`Repository.active_devices` no longer
offers it for selection; it still authenticates and polls (and is told to wait). The event
``device_quarantined`` (and a ``DeviceQuarantined`` ledger entry) records why. ``qflare device restore
ID`` (``POST /v1/admin/devices/{id}/restore``) makes it active again and forgets its earlier strikes.

Strikes are events (``reputation_strike``) in the server's database, so reputation survives a
restart and needs no table of its own. A single round's flags are noisy (the coordinate-wise rules
flag honest updates on small models; clipping flags honest outliers under non-IID data), which is why
one round never quarantines anyone by default.

Flags come from both backends: the in-process aggregator names flagged updates by hash
(``flagged_updates``), the enclave names their devices in its ``finalize`` answer (``flagged_devices``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from qflare.config import ReputationConfig
from qflare.server.storage import DeviceRecord, Repository

if TYPE_CHECKING:
    from qflare.server.ledger import AuditLog

__all__ = ["QUARANTINED", "Reputation"]

log = logging.getLogger("qflare.reputation")

QUARANTINED = "quarantined"
_STRIKE = "reputation_strike"
_RESTORED = "device_restored"
_QUARANTINE = "device_quarantined"


class Reputation:
    """Counts strikes per device and quarantines or restores devices.

    Parameters
    ----------
    repo:
        Where strikes (events) and device status live.
    config:
        ``threshold`` and ``window``; ``enabled: false`` records nothing.
    clock:
        Current time in seconds.
    ledger:
        Returns the audit ledger, if the server keeps one (quarantines and restores are entries).
    """

    def __init__(
        self, repo: Repository, config: ReputationConfig, *, clock: Callable[[], float],
        ledger: Callable[[], AuditLog | None] = lambda: None,
    ) -> None:
        self.repo = repo
        self.config = config
        self.clock = clock
        self._ledger = ledger

    def strike(self, device_id: str, round_id: int, reason: str) -> bool:
        """Record that ``device_id``'s update in ``round_id`` was refused or flagged; return whether it is now
        quarantined."""
        if not self.config.enabled:
            return False
        self.repo.add_event(_STRIKE, now=self.clock(), device_id=device_id, round_id=round_id, reason=reason[:64])
        rounds = self.strike_rounds(device_id, current_round=round_id)
        if len(rounds) < self.config.threshold:
            return False
        why = (f"{reason}: refused or flagged in {len(rounds)} of the last {self.config.window} rounds "
               f"({', '.join(str(r) for r in sorted(rounds))})")
        return self.quarantine(device_id, why)

    def strike_rounds(self, device_id: str, *, current_round: int) -> set[int]:
        """Rounds within the window with a strike for ``device_id`` since its last restore."""
        rounds: set[int] = set()
        for ev in self.repo.device_events(device_id, (_STRIKE, _RESTORED)):
            if ev.kind == _RESTORED:
                break  # newest first: strikes before a restore are forgiven
            if ev.round_id is not None and ev.round_id > current_round - self.config.window:
                rounds.add(ev.round_id)
        return rounds

    def quarantine(self, device_id: str, reason: str) -> bool:
        """Quarantine an active device (``False`` if it was not active: revoked or already quarantined)."""
        now = self.clock()
        rec = self.repo.set_device_status(device_id, QUARANTINED, expect="active")
        if rec is None:
            return False
        self.repo.add_event(_QUARANTINE, now=now, device_id=device_id, reason="reputation", detail=reason)
        log.warning("device %s quarantined: %s", device_id, reason)
        ledger = self._ledger()
        if ledger is not None:
            from qflare.ledger.entries import DeviceQuarantined

            ledger.record(DeviceQuarantined(device_id=device_id, reason=reason[:500], time_ms=int(now * 1000)))
        return True

    def restore(self, device_id: str) -> DeviceRecord | None:
        """Make a quarantined device active again; ``None`` if it was not quarantined."""
        now = self.clock()
        rec = self.repo.set_device_status(device_id, "active", expect=QUARANTINED)
        if rec is not None:
            self.repo.add_event(_RESTORED, now=now, device_id=device_id, reason="operator")
            log.info("device %s restored", device_id)
            ledger = self._ledger()
            if ledger is not None:
                from qflare.ledger.entries import DeviceRestored

                ledger.record(DeviceRestored(device_id=device_id, time_ms=int(now * 1000)))
        return rec

    def reason(self, device_id: str) -> str | None:
        """Why the device is quarantined (the latest ``device_quarantined`` event), if it is."""
        events = self.repo.device_events(device_id, (_QUARANTINE, _RESTORED), limit=1)
        if events and events[0].kind == _QUARANTINE:
            return events[0].detail
        return None
