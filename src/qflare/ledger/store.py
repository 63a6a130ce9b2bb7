"""The storage port of the ledger: :class:`LogStore`, and :class:`MemoryLogStore`.

The ledger is pure: it never opens a database. The server's SQL store implements :class:`LogStore`
(see ``docs/ledger.md``, "LogStore contract") and the ledger does the hashing, tiling and signing.

What a store holds, and the rules it must keep:

- **Entries** at indices ``0 .. size-1``: the canonical leaf bytes (``entries``) and their RFC 9162
  leaf hashes (``leaf_hashes``, 32 bytes each), written together. Indices are dense; a store never
  has a gap, never rewrites an index, never deletes one.
- **Hash tiles** keyed by ``(tile level, tile index)``: the latest bytes of each tile (a multiple of
  32 bytes, at most 256 hashes). A tile only ever grows by appending hashes; the ledger hands the
  store the whole new value of each tile it touched, and the store replaces (upserts) it.
- **Checkpoints**: signed notes in the order they were issued, with their tree size.

:meth:`LogStore.append` is the only write of entries and tiles, and must be atomic (one
transaction): either all of a batch's entries and tiles are stored, or none. It must refuse a batch
whose ``start`` is not the current size (another writer got there first) with
:class:`qflare.errors.Conflict` (``reason="log_size_mismatch"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qflare.errors import Conflict, LedgerIntegrityError

__all__ = ["LogStore", "MemoryLogStore", "StoredCheckpoint", "TileKey"]

TileKey = tuple[int, int]
"""``(tile level, tile index)``."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as stored: its tree ``size`` and the signed ``note`` bytes."""

    size: int
    note: bytes


@runtime_checkable
class LogStore(Protocol):
    """Where a :class:`qflare.ledger.log.TransparencyLog` keeps its entries, tiles and checkpoints.

    All methods are synchronous and may be called from one writer and many readers; reads see only
    fully committed batches.
    """

    def size(self) -> int:
        """The number of entries stored (the next index to be written)."""
        ...

    def append(
        self,
        start: int,
        entries: Sequence[bytes],
        leaf_hashes: Sequence[bytes],
        tiles: Mapping[TileKey, bytes],
    ) -> None:
        """Atomically store ``entries[i]`` / ``leaf_hashes[i]`` at index ``start + i`` and upsert ``tiles``.

        ``len(entries) == len(leaf_hashes)``. Raises :class:`qflare.errors.Conflict`
        (``log_size_mismatch``) if ``start != size()``; nothing is written then.
        """
        ...

    def read_entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start .. end-1`` (``0 <= start <= end <= size()``), exactly ``end - start`` of them."""
        ...

    def read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Stored leaf hashes ``start .. end-1``, as :meth:`read_entries`."""
        ...

    def find_leaf(self, leaf_hash: bytes) -> int | None:
        """The lowest index whose stored leaf hash is ``leaf_hash``, or ``None`` (needs an index on it)."""
        ...

    def read_tile(self, level: int, index: int) -> bytes | None:
        """The latest bytes of hash tile (``level``, ``index``), or ``None`` if never written."""
        ...

    def add_checkpoint(self, size: int, note: bytes) -> None:
        """Record a signed checkpoint note for tree ``size`` (append-only, in issue order)."""
        ...

    def read_checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, in the order they were added."""
        ...

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The most recently added checkpoint, or ``None``."""
        ...


class MemoryLogStore:
    """An in-memory :class:`LogStore` (tests, simulations, benchmarks).

    The lists ``entries``, ``leaf_hashes`` and ``checkpoints`` and the dict ``tiles`` are public so
    that tests can tamper with stored rows exactly as an attacker with database access could.
    """

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.leaf_hashes: list[bytes] = []
        self.tiles: dict[TileKey, bytes] = {}
        self.checkpoints: list[StoredCheckpoint] = []
        self._by_hash: dict[bytes, int] = {}

    def size(self) -> int:
        return len(self.entries)

    def append(
        self,
        start: int,
        entries: Sequence[bytes],
        leaf_hashes: Sequence[bytes],
        tiles: Mapping[TileKey, bytes],
    ) -> None:
        if start != len(self.entries):
            raise Conflict(f"append at {start} but the log has {len(self.entries)} entries", reason="log_size_mismatch")
        if len(entries) != len(leaf_hashes):
            raise LedgerIntegrityError("entries and leaf hashes differ in number", reason="batch_mismatch")
        for i, h in enumerate(leaf_hashes):
            self._by_hash.setdefault(bytes(h), start + i)
        self.entries.extend(bytes(e) for e in entries)
        self.leaf_hashes.extend(bytes(h) for h in leaf_hashes)
        self.tiles.update(tiles)

    def read_entries(self, start: int, end: int) -> list[bytes]:
        return self.entries[start:end]

    def read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self.leaf_hashes[start:end]

    def find_leaf(self, leaf_hash: bytes) -> int | None:
        return self._by_hash.get(bytes(leaf_hash))

    def read_tile(self, level: int, index: int) -> bytes | None:
        return self.tiles.get((level, index))

    def add_checkpoint(self, size: int, note: bytes) -> None:
        self.checkpoints.append(StoredCheckpoint(size, bytes(note)))

    def read_checkpoints(self) -> list[StoredCheckpoint]:
        return list(self.checkpoints)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None
