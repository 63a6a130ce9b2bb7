"""Accepted updates and their stored bytes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from qflare.errors import Conflict, DuplicateUpdate, NotFound
from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    NewEvent,
    UpdateRecord,
    _update,
)
from qflare.server.storage.tables import LedgerOutbox, Round, Update

# The round close barrier's advisory lock (with the round id as its second key): ``add_update`` takes it
# shared, the round owner exclusively while it closes the round (qflare.server.lease.PostgresLease.closing).
CLOSE_KEY_SQL = "hashtext('qflare-close:' || current_database() || ':' || current_schema())"


class UpdateStore(StoreBase):
    """Accepted updates and their stored bytes."""

    def add_update(
        self,
        round_id: int,
        device_id: str,
        *,
        num_examples: int,
        train_loss: float | None,
        sha256: str,
        blob: bytes,
        now: float,
        size_bytes: int | None = None,
        event: NewEvent | None = None,
        ledger: Sequence[bytes] = (),
        dp_epsilon: float | None = None,
    ) -> UpdateRecord:
        """Record an accepted update; the (round, device) unique constraint makes duplicates atomic.

        ``ledger``: audit entries committed with it, into the ledger outbox (:mod:`.outbox`)."""
        try:
            with self._tx() as s:
                if self.engine.dialect.name == "postgresql":  # waits while the owner closes the round
                    s.execute(text(f"SELECT pg_advisory_xact_lock_shared({CLOSE_KEY_SQL}, :r)"), {"r": round_id})
                rnd = s.get(Round, round_id, with_for_update=True)
                if rnd is None:
                    raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
                if rnd.status != "open":
                    raise Conflict(f"round {round_id} is {rnd.status}", reason="round_closed")
                row = Update(
                    round_id=round_id,
                    device_id=device_id,
                    num_examples=num_examples,
                    train_loss=train_loss,
                    sha256=sha256,
                    size_bytes=len(blob) if size_bytes is None else size_bytes,
                    dp_epsilon=dp_epsilon,
                    blob=blob,
                    received_at=now,
                )
                s.add(row)
                if event is not None:
                    s.add(event.row(now))
                s.add_all(LedgerOutbox(entry=bytes(e), created_at=now) for e in ledger)
                s.flush()
                return _update(row)
        except IntegrityError:
            raise DuplicateUpdate(
                f"device {device_id!r} already sent an update for round {round_id}"
            ) from None

    def has_update(self, round_id: int, device_id: str) -> bool:
        with self._tx() as s:
            q = select(Update.update_id).where(Update.round_id == round_id, Update.device_id == device_id)
            return s.scalar(q) is not None

    def round_updates(self, round_id: int) -> list[UpdateRecord]:
        with self._tx() as s:
            # Not the stored bytes: a round close reads these records (500 x 4 MB would be 2 GB from the database).
            q = (select(Update).options(defer(Update.blob)).where(Update.round_id == round_id)
                 .order_by(Update.update_id))
            return [_update(r) for r in s.scalars(q)]

    def iter_update_blobs(self, round_id: int) -> Iterator[tuple[UpdateRecord, bytes]]:
        """Yield accepted updates with their bytes, one read from the database at a time."""
        ids = [r for r in self._update_ids(round_id)]
        for update_id in ids:
            with self._tx() as s:
                row = s.get(Update, update_id)
                if row is not None and row.blob is not None:
                    yield _update(row), bytes(row.blob)

    def drop_update_blobs(self, round_id: int, *, limit: int | None = None, batch: int = 8) -> int:
        """Forget the stored bytes of ``round_id``'s updates, ``batch`` rows per transaction, at most
        ``limit`` rows (None: all); returns how many were dropped.

        Small transactions: SQLite overwrites freed pages (``secure_delete``, so dropped updates do not
        linger in the file), so one transaction over a 1000-update round wrote 4 GB into its WAL while
        every other writer waited. Between batches the WAL is checkpointed back to a bounded size."""
        dropped = 0
        while limit is None or dropped < limit:
            n = batch if limit is None else min(batch, limit - dropped)
            with self._tx() as s:
                ids = list(s.scalars(select(Update.update_id).where(
                    Update.round_id == round_id, Update.blob.is_not(None)).order_by(Update.update_id).limit(n)))
                if ids:
                    s.execute(update(Update).where(Update.update_id.in_(ids)).values(blob=None))
            dropped += len(ids)
            self.checkpoint_wal()
            if len(ids) < n:
                break
        return dropped

    def rounds_holding_blobs(self, statuses: Sequence[str]) -> list[int]:
        """Rounds in one of ``statuses`` whose updates still hold stored bytes (a drop a crash interrupted)."""
        with self._tx() as s:
            q = (select(Update.round_id).join(Round, Round.round_id == Update.round_id)
                 .where(Round.status.in_(statuses), Update.blob.is_not(None)).distinct())
            return sorted(s.scalars(q))

    def update_device_ids(self, round_id: int) -> list[str]:
        """The devices with an accepted update in ``round_id``, in acceptance order."""
        with self._tx() as s:
            q = select(Update.device_id).where(Update.round_id == round_id).order_by(Update.update_id)
            return list(s.scalars(q))

    def update_blob(self, round_id: int, device_id: str) -> bytes | None:
        """One accepted update's stored bytes (``None`` once dropped at close)."""
        with self._tx() as s:
            q = select(Update.blob).where(Update.round_id == round_id, Update.device_id == device_id)
            blob = s.scalar(q)
            return bytes(blob) if blob is not None else None

    def update_heads(self, round_id: int, device_ids: Sequence[str], *, size: int) -> dict[str, bytes]:
        """The first ``size`` stored bytes of each of ``device_ids``' updates in ``round_id`` (none for an
        update whose bytes were dropped): a stored update's public header, read without its megabytes."""
        heads: dict[str, bytes] = {}
        with self._tx() as s:
            for i in range(0, len(device_ids), 500):
                q = (select(Update.device_id, func.substr(Update.blob, 1, size))
                     .where(Update.round_id == round_id, Update.device_id.in_(device_ids[i:i + 500]),
                            Update.blob.is_not(None)))
                heads.update((d, bytes(h)) for d, h in s.execute(q))
        return heads

    def _update_ids(self, round_id: int) -> list[int]:
        with self._tx() as s:
            q = select(Update.update_id).where(Update.round_id == round_id).order_by(Update.update_id)
            return list(s.scalars(q))

    def count_updates(self, round_id: int | None = None) -> int:
        """Accepted updates, of ``round_id`` or of every round (a count in SQL: the status is polled)."""
        q = select(func.count()).select_from(Update)
        with self._tx() as s:
            return int(s.scalar(q if round_id is None else q.where(Update.round_id == round_id)) or 0)
