"""The LogStore contract (docs/ledger.md) on MemoryLogStore (the reference), SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.crypto import SigningKey, secret_access
from qflare.errors import Conflict
from qflare.ledger import HybridNoteSigner, LogStore, MemoryLogStore, TransparencyLog, verify_log
from qflare.ledger.merkle import leaf_hash, root_from_leaf_hashes
from qflare.ledger.store import StoredCheckpoint
from qflare.server.storage.ledger_store import SqlLogStore
from tests.server.pg import fresh_schema

ORIGIN = "qflare.test/ledger"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    if request.param == "memory":
        yield MemoryLogStore()
        return
    if request.param == "sqlite":
        s = SqlLogStore(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        yield s
        s.close()
        return
    with fresh_schema() as url:
        s = SqlLogStore(url)
        try:
            yield s
        finally:
            s.close()


def _entries(n: int, start: int = 0) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(start, start + n)]


def test_empty_store(store: LogStore) -> None:
    assert isinstance(store, LogStore)
    assert store.size() == 0
    assert store.read_entries(0, 0) == [] and store.read_leaf_hashes(0, 0) == []
    assert store.find_leaf(b"\0" * 32) is None
    assert store.read_tile(0, 0) is None
    assert store.read_checkpoints() == [] and store.latest_checkpoint() is None


def test_append_reads_back_dense_rows_and_upserts_tiles(store: LogStore) -> None:
    e = _entries(5)
    h = [leaf_hash(x) for x in e]
    store.append(0, e[:3], h[:3], {(0, 0): b"a" * 96})
    store.append(3, e[3:], h[3:], {(0, 0): b"a" * 160, (1, 0): b"b" * 32})
    assert store.size() == 5
    assert store.read_entries(0, 5) == e and store.read_entries(1, 3) == e[1:3]
    assert store.read_leaf_hashes(2, 5) == h[2:]
    assert store.read_tile(0, 0) == b"a" * 160 and store.read_tile(1, 0) == b"b" * 32
    assert store.read_tile(0, 1) is None


def test_find_leaf_returns_the_lowest_index(store: LogStore) -> None:
    same = leaf_hash(b"dup")
    store.append(0, [b"x", b"dup", b"dup"], [leaf_hash(b"x"), same, same], {})
    assert store.find_leaf(same) == 1
    assert store.find_leaf(leaf_hash(b"x")) == 0
    assert store.find_leaf(leaf_hash(b"nope")) is None


@pytest.mark.parametrize("start", [1, 2, 0])
def test_append_at_the_wrong_size_is_refused_and_writes_nothing(store: LogStore, start: int) -> None:
    store.append(0, [b"a"], [leaf_hash(b"a")], {(0, 0): b"t" * 32})
    if start == 1:
        store.append(1, [b"b"], [leaf_hash(b"b")], {})
        start = 1  # now stale
    with pytest.raises(Conflict) as info:
        store.append(start, [b"z"], [leaf_hash(b"z")], {(0, 0): b"X" * 64, (5, 5): b"Y" * 32})
    assert info.value.reason == "log_size_mismatch"
    assert b"z" not in store.read_entries(0, store.size())
    assert store.read_tile(0, 0) == b"t" * 32 and store.read_tile(5, 5) is None


def test_checkpoints_are_kept_in_order(store: LogStore) -> None:
    store.add_checkpoint(3, b"note-3")
    store.add_checkpoint(1, b"note-1")
    store.add_checkpoint(3, b"note-3b")
    assert store.read_checkpoints() == [
        StoredCheckpoint(3, b"note-3"), StoredCheckpoint(1, b"note-1"), StoredCheckpoint(3, b"note-3b")
    ]
    assert store.latest_checkpoint() == StoredCheckpoint(3, b"note-3b")


def test_transparency_log_over_the_store_verifies_and_resumes(store: LogStore) -> None:
    signer = HybridNoteSigner(ORIGIN, SigningKey.from_seed(bytes(range(64)), secret_access.TOKEN),
                              secret_access.TOKEN)
    log = TransparencyLog(store, origin=ORIGIN, signer=signer)
    entries = _entries(600)
    for a, b in [(0, 1), (1, 256), (256, 300), (300, 600)]:
        log.append(entries[a:b])
        log.checkpoint()
    assert log.root() == root_from_leaf_hashes(leaf_hash(e) for e in entries)
    again = TransparencyLog(store, origin=ORIGIN)
    assert again.size() == 600 and again.root() == log.root()
    idx, proof = again.prove_inclusion(leaf_hash(entries[299]))
    assert idx == 299 and proof == log.inclusion_proof(299)
    report = verify_log(store, signer.log_key(), origin=ORIGIN)
    assert report.ok, report.problems
    assert report.checkpoints_checked == 4


def test_two_writers_on_one_database(store: LogStore) -> None:
    a = TransparencyLog(store, origin=ORIGIN)
    b = TransparencyLog(store, origin=ORIGIN)
    a.append([b"a1"])
    with pytest.raises(Conflict):
        b.append([b"b1"])
    b.refresh()
    b.append([b"b1"])
    assert store.read_entries(0, 2) == [b"a1", b"b1"]
