"""Issue 13, "Several workers, one truth": the round owner's close counts the updates other workers stored
one stored update at a time, and does not read back at all what a shared enclave already counts.

Across workers, the owner replays from the database the updates the other workers accepted. Read all at
once, a round of 500 x 4 MB is 2 GB in the owner; one at a time, the close holds O(one update).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.crypto import SigningKey
from qflare.fl.serialize import sha256_hex
from qflare.server.aggregation import InProcessAggregator
from tests.server.conftest import Harness, make_harness

N = 50
_KEYS = {f"edge_{i:02d}": SigningKey.generate() for i in range(N)}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "a").mkdir()
    yield from make_harness(tmp_path / "a", keys=_KEYS, min_devices=N, min_quorum=N)


def _blobs(h: Harness) -> dict[str, bytes]:
    return {d: h.update_blob(num_examples=5 + i, scale=1.0 + i / 64) for i, d in enumerate(sorted(_KEYS))}


def _store_as_another_worker(h: Harness, rid: int, blobs: dict[str, bytes]) -> None:
    """What a follower's accept leaves: the update's row, not counted in this (the owner's) backend."""
    for i, (d, blob) in enumerate(blobs.items()):
        h.state.repo.add_update(rid, d, num_examples=5 + i, train_loss=0.5, sha256=sha256_hex(blob), blob=blob,
                                now=h.clock())


def test_the_owner_counts_another_workers_updates_one_at_a_time_to_the_same_model(
        harness: Harness, tmp_path: Path) -> None:
    # Prepare: 50 updates accepted by another worker (in the database only); the same 50 uploaded to a
    # single server (no replay) give the reference model
    h = harness
    rid = h.open_round()
    blobs = _blobs(h)
    one = max(len(b) for b in blobs.values())
    _store_as_another_worker(h, rid, blobs)
    reads: list[str] = []
    read = h.state.repo.update_blob
    h.state.repo.update_blob = lambda r, d: reads.append(d) or read(r, d)  # type: ignore[method-assign]

    # Execute: the owner's tick counts them from the database and closes the round (all reported)
    tracemalloc.start()
    try:
        h.state.orchestrator.tick()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert: each stored update read once, in acceptance order, never more than a few at once in memory
    rnd = h.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated", rnd
    assert reads == sorted(_KEYS)
    assert rnd.metrics is not None
    assert (rnd.metrics["replayed_updates"], rnd.metrics["replay_skipped_updates"]) == (N, 0)
    assert peak < 12 * one < N * one // 4, (peak, one)  # all 50 at once would be over 50x one
    (tmp_path / "b").mkdir()
    gen = make_harness(tmp_path / "b", keys=_KEYS, min_devices=N, min_quorum=N)
    ref = next(gen)
    try:
        ref_rid = ref.open_round()
        for d, blob in blobs.items():
            assert ref.post(d, f"/v1/device/rounds/{ref_rid}/update", blob).status_code == 200
        assert h.state.repo.model_blob(1) == ref.state.repo.model_blob(1)  # bit-identical
    finally:
        gen.close()


class _SharedBackend(InProcessAggregator):
    """An in-process stand-in for the shared enclave: it already counts ``counted`` (another worker forwarded
    them) and says so from the stored updates' heads, as :class:`RemoteEnclaveAggregator` does."""

    HEAD_BYTES = 16

    def __init__(self) -> None:
        super().__init__()
        self.counted: set[str] = set()
        self.heads: dict[str, bytes] = {}
        self.replayed: list[bytes] = []

    def counted_devices(self, round_id: int, heads: dict[str, bytes]) -> set[str]:
        self.heads = dict(heads)
        return {d for d in heads if d in self.counted}

    def replay(self, round_id: int, stored: bytes) -> None:
        self.replayed.append(stored)
        super().replay(round_id, stored)


def test_what_a_shared_backend_already_counts_is_not_read_back(tmp_path: Path) -> None:
    # Prepare: a shared backend that already counts 40 of the 50 stored updates (their bytes went into it
    # when the other worker accepted them)
    backend = _SharedBackend()
    gen = make_harness(tmp_path, keys=_KEYS, min_devices=N, min_quorum=N, backend=backend)
    h = next(gen)
    try:
        rid = h.open_round()
        blobs = _blobs(h)
        _store_as_another_worker(h, rid, blobs)
        devices = sorted(_KEYS)
        for d in devices[:40]:
            backend.replay(rid, blobs[d])  # what the other worker's accumulate did
            backend.counted.add(d)
        backend.replayed.clear()
        reads: list[str] = []
        read = h.state.repo.update_blob
        h.state.repo.update_blob = lambda r, d: reads.append(d) or read(r, d)  # type: ignore[method-assign]

        # Execute
        h.state.orchestrator.tick()

        # Assert: only heads of the counted ones; the other 10 read and replayed whole, in order; closed
        assert backend.heads == {d: blobs[d][:16] for d in devices}
        assert reads == devices[40:]
        assert backend.replayed == [blobs[d] for d in devices[40:]]
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated" and rnd.metrics is not None
        assert rnd.metrics["num_updates"] == N
        assert (rnd.metrics["replayed_updates"], rnd.metrics["replay_skipped_updates"]) == (10, 40)
    finally:
        gen.close()


def test_an_update_whose_bytes_are_gone_is_neither_counted_nor_read(tmp_path: Path) -> None:
    # Prepare: three stored updates, the first one's bytes dropped
    backend = _SharedBackend()
    gen = make_harness(tmp_path, keys=_KEYS, min_devices=N, min_quorum=N, backend=backend)
    h = next(gen)
    try:
        rid = h.open_round()
        first = sorted(_KEYS)[:3]
        blobs = _blobs(h)
        _store_as_another_worker(h, rid, {d: blobs[d] for d in first})
        assert h.state.repo.drop_update_blobs(rid, limit=1) == 1

        # Execute
        seen = h.state.orchestrator._replay_stored(rid, first)

        # Assert
        assert sorted(backend.heads) == first[1:]
        assert seen == set(first[1:]) and backend.replayed == [blobs[d] for d in first[1:]]
    finally:
        gen.close()
