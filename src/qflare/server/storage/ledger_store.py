"""The SQL :class:`qflare.ledger.LogStore`: the audit ledger's entries, hash tiles and checkpoints.

Three tables on the same declarative ``Base`` as :mod:`qflare.server.storage.tables` (so one database
holds both), created by the migrations like the repository's (Alembic revision ``0003``). The rules of
``docs/ledger.md`` ("LogStore contract"): entry rows are keyed by their index (a second writer at the
same index fails on the primary key), ``append`` is one transaction (entry rows + tile upserts), the leaf
hash column is indexed for :meth:`SqlLogStore.find_leaf`, checkpoints are append-only with an
autoincrement sequence number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, LargeBinary, Table, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from qflare.errors import Conflict, LedgerIntegrityError
from qflare.ledger.store import StoredCheckpoint, TileKey
from qflare.server.storage.repo import make_engine
from qflare.server.storage.schema import upgrade_schema
from qflare.server.storage.tables import Base

__all__ = ["LedgerCheckpoint", "LedgerEntry", "LedgerTile", "SqlLogStore"]


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)


class LedgerTile(Base):
    __tablename__ = "ledger_tiles"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tile_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    size: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[bytes] = mapped_column(LargeBinary)


_E: Table = LedgerEntry.__table__  # type: ignore[assignment]
_T: Table = LedgerTile.__table__  # type: ignore[assignment]
_C: Table = LedgerCheckpoint.__table__  # type: ignore[assignment]
_TABLES = [_E, _T, _C]


class SqlLogStore:
    """A :class:`qflare.ledger.LogStore` on SQLite or PostgreSQL.

    Parameters
    ----------
    db:
        A database URL (``sqlite:///path.db``, ``postgresql://...``) or an existing engine (the
        repository's, to share its pool).
    """

    def __init__(self, db: str | Engine) -> None:
        self._own_engine = isinstance(db, str)
        self.engine = make_engine(db) if isinstance(db, str) else db
        upgrade_schema(self.engine)  # a no-op (a few ms) on a Repository's engine, already current
        self._dialect = self.engine.dialect.name

    def close(self) -> None:
        if self._own_engine:
            self.engine.dispose()

    def size(self) -> int:
        with self.engine.connect() as c:
            n = c.execute(select(func.max(_E.c.idx))).scalar()
        return 0 if n is None else int(n) + 1

    def append(
        self,
        start: int,
        entries: Sequence[bytes],
        leaf_hashes: Sequence[bytes],
        tiles: Mapping[TileKey, bytes],
    ) -> None:
        if len(entries) != len(leaf_hashes):
            raise LedgerIntegrityError("entries and leaf hashes differ in number", reason="batch_mismatch")
        try:
            with self.engine.begin() as c:
                n = c.execute(select(func.max(_E.c.idx))).scalar()
                size = 0 if n is None else int(n) + 1
                if start != size:
                    raise Conflict(f"append at {start} but the log has {size} entries", reason="log_size_mismatch")
                if entries:
                    c.execute(
                        insert(_E),
                        [
                            {"idx": start + i, "entry": bytes(e), "leaf_hash": bytes(h)}
                            for i, (e, h) in enumerate(zip(entries, leaf_hashes, strict=True))
                        ],
                    )
                for (level, index), data in tiles.items():
                    c.execute(self._upsert_tile(level, index, bytes(data)))
        except IntegrityError:
            raise Conflict(f"another writer appended at {start}", reason="log_size_mismatch") from None

    def _upsert_tile(self, level: int, index: int, data: bytes) -> Any:
        values = {"level": level, "tile_index": index, "data": data}
        if self._dialect == "postgresql":
            pq = pg_insert(_T).values(**values)
            return pq.on_conflict_do_update(index_elements=["level", "tile_index"], set_={"data": pq.excluded.data})
        if self._dialect == "sqlite":
            sq = sqlite_insert(_T).values(**values)
            return sq.on_conflict_do_update(index_elements=["level", "tile_index"], set_={"data": sq.excluded.data})
        raise NotImplementedError(f"no tile upsert for {self._dialect}")  # pragma: no cover

    def _read_column(self, column: Any, start: int, end: int) -> list[bytes]:
        if end <= start:
            return []
        with self.engine.connect() as c:
            rows = c.execute(
                select(column).where(_E.c.idx >= start, _E.c.idx < end).order_by(_E.c.idx)
            ).scalars()
            return [bytes(r) for r in rows]

    def read_entries(self, start: int, end: int) -> list[bytes]:
        return self._read_column(_E.c.entry, start, end)

    def read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self._read_column(_E.c.leaf_hash, start, end)

    def find_leaf(self, leaf_hash: bytes) -> int | None:
        with self.engine.connect() as c:
            n = c.execute(select(func.min(_E.c.idx)).where(_E.c.leaf_hash == bytes(leaf_hash))).scalar()
        return None if n is None else int(n)

    def read_tile(self, level: int, index: int) -> bytes | None:
        with self.engine.connect() as c:
            data = c.execute(select(_T.c.data).where(_T.c.level == level, _T.c.tile_index == index)).scalar()
        return None if data is None else bytes(data)

    def add_checkpoint(self, size: int, note: bytes) -> None:
        with self.engine.begin() as c:
            c.execute(insert(_C).values(size=size, note=bytes(note)))

    def read_checkpoints(self) -> list[StoredCheckpoint]:
        with self.engine.connect() as c:
            rows = c.execute(select(_C.c.size, _C.c.note).order_by(_C.c.seq)).all()
        return [StoredCheckpoint(int(r.size), bytes(r.note)) for r in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self.engine.connect() as c:
            r = c.execute(select(_C.c.size, _C.c.note).order_by(_C.c.seq.desc()).limit(1)).first()
        return None if r is None else StoredCheckpoint(int(r.size), bytes(r.note))
