"""The server's own event record (the audit log is the ledger)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    EventRecord,
    NewEvent,
)
from qflare.server.storage.tables import Event, Update


class EventStore(StoreBase):
    """The server's own event record (the audit log is the ledger)."""

    def add_event(
        self,
        kind: str,
        *,
        now: float,
        device_id: str | None = None,
        round_id: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        """An event on its own (a refusal, a start-up fact); a state change passes its event with ``event=``."""
        with self._tx() as s:
            s.add(NewEvent(kind, device_id, round_id, reason, detail).row(now))

    def per_device_counts(self) -> dict[str, tuple[int, int]]:
        """``{device_id: (updates accepted, requests and updates refused)}`` (the dashboard's device table)."""
        with self._tx() as s:
            accepted = {d: n for d, n in s.execute(select(Update.device_id, func.count()).group_by(Update.device_id))}
            q = select(Event.device_id, func.count()).where(
                Event.kind.in_(("request_rejected", "update_rejected")), Event.device_id.is_not(None)
            ).group_by(Event.device_id)
            refused = {d: n for d, n in s.execute(q)}
        return {d: (int(accepted.get(d, 0)), int(refused.get(d, 0))) for d in {*accepted, *refused} if d}

    def refusal_times(self, *, limit: int = 5000) -> list[tuple[float, str | None]]:
        """``(ts, reason)`` of the newest refusals, oldest first (the dashboard's refusals over time)."""
        with self._tx() as s:
            q = select(Event.ts, Event.reason).where(Event.kind.in_(("request_rejected", "update_rejected"))).order_by(
                Event.event_id.desc()).limit(limit)
            return [(float(ts), reason) for ts, reason in reversed(list(s.execute(q)))]

    def count_events_by_reason(self, kinds: Sequence[str]) -> dict[tuple[str, str | None], int]:
        """``{(kind, reason): count}`` over events of ``kinds`` (the metrics' refusals by reason)."""
        with self._tx() as s:
            q = select(Event.kind, Event.reason, func.count()).where(Event.kind.in_(kinds)).group_by(
                Event.kind, Event.reason)
            return {(kind, reason): int(n) for kind, reason, n in s.execute(q)}

    def list_events(self, *, kind: str | None = None, limit: int = 1000) -> list[EventRecord]:
        with self._tx() as s:
            q = select(Event).order_by(Event.event_id.desc()).limit(limit)
            if kind is not None:
                q = q.where(Event.kind == kind)
            return [
                EventRecord(r.event_id, r.ts, r.kind, r.device_id, r.round_id, r.reason, r.detail)
                for r in s.scalars(q)
            ]

    def device_events(self, device_id: str, kinds: tuple[str, ...], *, limit: int = 1000) -> list[EventRecord]:
        """The device's events of these kinds, newest first."""
        with self._tx() as s:
            q = (select(Event).where(Event.device_id == device_id, Event.kind.in_(kinds))
                 .order_by(Event.event_id.desc()).limit(limit))
            return [
                EventRecord(r.event_id, r.ts, r.kind, r.device_id, r.round_id, r.reason, r.detail)
                for r in s.scalars(q)
            ]

    def count_events(self, kind: str) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(Event).where(Event.kind == kind)) or 0)
