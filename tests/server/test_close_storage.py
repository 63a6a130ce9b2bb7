"""Issue 12, "Load": a 1000-update round's close on SQLite had not finished after 10 minutes, with a 4 GB WAL.

Three causes, each pinned here: listing a round's updates read every update's bytes; the close dropped
every update's bytes in its own transaction (SQLite's secure_delete overwrites each freed page, so the WAL
received the whole round again while every request waited on the orchestrator's lock); and with readers
always present SQLite's passive checkpoints never restarted the WAL, which grew by every update stored.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import event

from qflare.server.storage import Repository

BLOB = 1_000_000


def _round_with_updates(repo: Repository, n: int) -> None:
    repo.add_model(0, blob=b"m0", sha256="0" * 64, spec_fingerprint="f", round_id=None, now=0.0)
    for i in range(n):
        repo.add_device(f"edge_{i}", now=1.0, public_key=b"pk", fingerprint=f"fp{i}")
    repo.open_round(1, base_version=0, selected=[f"edge_{i}" for i in range(n)], now=1.0, deadline_at=9.0)
    for i in range(n):
        repo.add_update(1, f"edge_{i}", num_examples=3, train_loss=None, sha256=f"{i:064x}",
                        blob=os.urandom(BLOB), now=2.0)


def test_listing_a_rounds_updates_reads_none_of_their_bytes(tmp_path: Path) -> None:
    # Prepare
    repo = Repository(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _round_with_updates(repo, 3)
    statements: list[str] = []
    event.listen(repo.engine, "before_cursor_execute", lambda c, cur, sql, *a: statements.append(sql))
    # Execute
    updates = repo.round_updates(1)
    # Assert: the records, from a query that names no blob column
    assert [u.device_id for u in updates] == ["edge_0", "edge_1", "edge_2"]
    assert statements and not any("blob" in s for s in statements), statements
    # the bytes are still there for a resume
    assert [len(b) for _, b in repo.iter_update_blobs(1)] == [BLOB] * 3
    repo.close()


def test_blobs_are_dropped_in_small_transactions_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    # Prepare: 24 updates of 1 MB, a reader that never stops (as long-polls never do), a WAL bound of 4 MB
    repo = Repository(f"sqlite:///{tmp_path / 'db.sqlite'}")
    repo.wal_max_bytes = 4 * 2**20
    wal = tmp_path / "db.sqlite-wal"
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            repo.get_round(1)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sizes = []
    try:
        repo.add_model(0, blob=b"m0", sha256="0" * 64, spec_fingerprint="f", round_id=None, now=0.0)
        for i in range(24):
            repo.add_device(f"edge_{i}", now=1.0, public_key=b"pk", fingerprint=f"fp{i}")
        repo.open_round(1, base_version=0, selected=[f"edge_{i}" for i in range(24)], now=1.0, deadline_at=9.0)
        for i in range(24):
            repo.add_update(1, f"edge_{i}", num_examples=3, train_loss=None, sha256=f"{i:064x}",
                            blob=os.urandom(BLOB), now=2.0)
            repo.checkpoint_wal()  # what the ticker does
            sizes.append(wal.stat().st_size)
        # Execute: close without dropping, then drop a bounded number at a time
        repo.close_round(1, status="aggregated", reason="all_reported", now=3.0, drop_update_blobs=False)
        first = repo.drop_update_blobs(1, limit=10)
        rest = repo.drop_update_blobs(1)
        again = repo.drop_update_blobs(1)
    finally:
        stop.set()
        t.join()
    # Assert: the WAL never held more than the bound and a few updates; every blob dropped, once
    assert max(sizes) < 4 * 2**20 + 4 * BLOB, sizes
    assert (first, rest, again) == (10, 14, 0)
    assert list(repo.iter_update_blobs(1)) == [] and len(repo.round_updates(1)) == 24
    assert repo.rounds_holding_blobs(("aggregated",)) == []
    assert wal.stat().st_size < 4 * 2**20 + 4 * BLOB
    repo.close()


def test_a_closed_rounds_updates_are_dropped_by_the_ticks_after_it(tmp_path: Path) -> None:
    from tests.server.conftest import make_harness

    # Prepare: a round of 3 closed by its last upload
    gen = make_harness(tmp_path, min_devices=3, min_quorum=3)
    h = next(gen)
    rid = h.open_round()
    for d in sorted(h.keys):
        assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
    rnd = h.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated"
    kept_by_the_close = len(list(h.state.repo.iter_update_blobs(rid)))
    # Execute
    h.state.orchestrator.tick()
    # Assert: the close itself dropped nothing (no 4 MB rewrites under the lock); the next tick dropped all
    assert kept_by_the_close == 3
    assert list(h.state.repo.iter_update_blobs(rid)) == []
    assert len(h.state.repo.round_updates(rid)) == 3
    gen.close()
