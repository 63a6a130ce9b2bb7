"""Bounded refusal accounting: refusal events (what garbage traffic writes) are purged by age and count.

State-change events (rounds, models, enrolment, revocation) stay; refusals are also rate-limited
per source (:mod:`qflare.server.ratelimit`), so what one source can write between purges is bounded too.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from qflare.server.storage.tables import Event

REFUSAL_KINDS = ("request_rejected", "update_rejected")


def purge_refusals(engine: Engine, *, before: float, keep_at_most: int) -> int:
    """Delete refusal events older than ``before``, then all but the newest ``keep_at_most``; the count."""
    with Session(engine) as s, s.begin():
        gone = s.execute(delete(Event).where(Event.kind.in_(REFUSAL_KINDS), Event.ts < before)).rowcount or 0
        cutoff = s.scalar(select(Event.event_id).where(Event.kind.in_(REFUSAL_KINDS))
                          .order_by(Event.event_id.desc()).offset(keep_at_most).limit(1))
        if cutoff is not None:
            old = delete(Event).where(Event.kind.in_(REFUSAL_KINDS), Event.event_id <= cutoff)
            gone += s.execute(old).rowcount or 0
    return int(gone)
