"""Bounded refusal accounting: refusal events (what garbage traffic writes) are purged by age and count.

State-change events (rounds, models, enrolment, revocation) stay; refusals are also rate-limited
per source (:mod:`qflare.server.ratelimit`), so what one source can write between purges is bounded too.
"""

from __future__ import annotations

from sqlalchemy import Delete, Engine, delete, select
from sqlalchemy.orm import Session

from qflare.server.storage.tables import Event

REFUSAL_KINDS = ("request_rejected", "update_rejected")


def _deleted(s: Session, stmt: Delete) -> int:
    return int(getattr(s.execute(stmt), "rowcount", 0) or 0)  # a CursorResult for a DELETE


def purge_refusals(engine: Engine, *, before: float, keep_at_most: int) -> int:
    """Delete refusal events older than ``before``, then all but the newest ``keep_at_most``; the count."""
    refusals = Event.kind.in_(REFUSAL_KINDS)
    with Session(engine) as s, s.begin():
        gone = _deleted(s, delete(Event).where(refusals, Event.ts < before))
        cutoff = s.scalar(select(Event.event_id).where(refusals).order_by(Event.event_id.desc())
                          .offset(keep_at_most).limit(1))
        if cutoff is not None:
            gone += _deleted(s, delete(Event).where(refusals, Event.event_id <= cutoff))
    return gone
