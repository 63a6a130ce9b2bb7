"""The ledger outbox: audit entries written in the transaction of their fact, appended to the log later.

``add_update`` and ``close_round`` take ``ledger=`` entry bytes and store them here with the update or
the close, so the fact and its audit entry are durable together. :meth:`OutboxStore.claim_ledger_entries`
hands them to the audit log in order and deletes them when the caller's block ends without an error;
on PostgreSQL the rows are locked (``FOR UPDATE SKIP LOCKED``) for the block, so two server workers
never append the same entry. A process killed between the append and the delete leaves the rows: the
next claim sees them again, and ``AuditLog.drain`` skips an entry the log already holds (by leaf hash).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, select

from qflare.server.storage.engine import StoreBase
from qflare.server.storage.tables import LedgerOutbox

__all__ = ["OutboxStore"]


class OutboxStore(StoreBase):
    """Audit-ledger entries waiting to be appended."""

    @contextmanager
    def claim_ledger_entries(self, limit: int = 1000) -> Iterator[list[bytes]]:
        """The oldest waiting entries (at most ``limit``), deleted when the block exits normally."""
        with self._tx() as s:
            q = select(LedgerOutbox).order_by(LedgerOutbox.seq).limit(limit)
            if self.engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = list(s.scalars(q))
            yield [bytes(r.entry) for r in rows]
            if rows:
                s.execute(delete(LedgerOutbox).where(LedgerOutbox.seq.in_([r.seq for r in rows])))

    def count_ledger_entries_waiting(self) -> int:
        with self._tx() as s:
            return len(list(s.scalars(select(LedgerOutbox.seq))))
