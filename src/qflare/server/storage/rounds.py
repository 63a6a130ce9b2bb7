"""Training rounds: open, close (with the new model), fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update

from qflare.errors import Conflict, NotFound
from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    NewEvent,
    RoundRecord,
    _round,
)
from qflare.server.storage.tables import LedgerOutbox, ModelVersion, Round, Update


class RoundStore(StoreBase):
    """Training rounds: open, close (with the new model), fail."""

    def open_round(
        self, round_id: int, *, base_version: int, selected: Sequence[str], now: float, deadline_at: float,
        event: NewEvent | None = None,
    ) -> RoundRecord:
        with self._tx() as s:
            row = Round(
                round_id=round_id,
                status="open",
                base_version=base_version,
                selected=list(selected),
                opened_at=now,
                deadline_at=deadline_at,
            )
            s.add(row)
            if event is not None:
                s.add(event.row(now))
            s.flush()
            return _round(row)

    def get_round(self, round_id: int) -> RoundRecord | None:
        with self._tx() as s:
            row = s.get(Round, round_id)
            return _round(row) if row is not None else None

    def open_rounds(self) -> list[RoundRecord]:
        with self._tx() as s:
            return [_round(r) for r in s.scalars(select(Round).where(Round.status == "open"))]

    def list_rounds(self) -> list[RoundRecord]:
        with self._tx() as s:
            return [_round(r) for r in s.scalars(select(Round).order_by(Round.round_id))]

    def last_round_id(self) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.coalesce(func.max(Round.round_id), 0))) or 0)

    def count_rounds(self, status: str) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(Round).where(Round.status == status)) or 0)

    def close_round(
        self,
        round_id: int,
        *,
        status: str,
        reason: str,
        now: float,
        new_model: tuple[int, bytes, str, str, bytes | None] | None = None,
        metrics: dict[str, Any] | None = None,
        drop_update_blobs: bool = True,
        event: NewEvent | None = None,
        expect_updates: int | None = None,
        ledger: Sequence[bytes] = (),
    ) -> RoundRecord:
        """Close an open round; with ``new_model`` = (version, blob, sha256, spec, signature) store it atomically.

        ``expect_updates`` fences the close against other server processes: the round row is locked (as
        ``add_update`` locks it), and if the round holds another number of updates than the caller
        aggregated, nothing changes and :class:`Conflict` ``round_changed`` is raised. ``ledger``: audit
        entries committed with the close, into the ledger outbox (:mod:`.outbox`).
        """
        with self._tx() as s:
            row = s.get(Round, round_id, with_for_update=True)
            if row is None:
                raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
            if row.status != "open":
                raise Conflict(f"round {round_id} is already {row.status}", reason="round_closed")
            if expect_updates is not None:
                n = s.scalar(select(func.count()).select_from(Update).where(Update.round_id == round_id))
                if int(n or 0) != expect_updates:
                    raise Conflict(f"round {round_id} has {n} updates, not {expect_updates}", reason="round_changed")
            row.status = status
            row.close_reason = reason
            row.closed_at = now
            row.metrics = metrics
            if new_model is not None:
                version, blob, sha, spec, signature = new_model
                s.add(
                    ModelVersion(
                        version=version, sha256=sha, spec_fingerprint=spec, blob=blob, signature=signature,
                        round_id=round_id, created_at=now,
                    )
                )
                row.new_version = version
            if drop_update_blobs:
                s.execute(update(Update).where(Update.round_id == round_id).values(blob=None))
            if event is not None:
                s.add(event.row(now))
            s.add_all(LedgerOutbox(entry=bytes(e), created_at=now) for e in ledger)
            s.flush()
            return _round(row)

    def set_round_metrics(self, round_id: int, metrics: dict[str, Any]) -> None:
        with self._tx() as s:
            row = s.get(Round, round_id)
            if row is None:
                raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
            row.metrics = {**(row.metrics or {}), **metrics}
