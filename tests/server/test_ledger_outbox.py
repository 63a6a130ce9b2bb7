"""The ledger outbox: an accepted update's and a closed round's audit entries are committed with them, so
a failed append or a crash between the database commit and the log append loses none and doubles none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.ledger import verify_log
from qflare.ledger.entries import AggregatePublished, UpdateAccepted, decode_event
from qflare.server.app import build_state

from .conftest import ADMIN, Harness, config_for, make_harness
from .test_ledger_events import _events


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _accepted(h: Harness) -> list[str]:
    return sorted(e.device_id for e in _events(h) if isinstance(e, UpdateAccepted))


def test_an_update_whose_append_fails_is_logged_once_by_the_next_drain(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the log's store refuses the next append (the database briefly locked)
    rid = harness.open_round()
    store = harness.state.ledger.store  # type: ignore[union-attr]
    real = store.append
    calls = {"n": 0}

    def flaky(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is locked")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "append", flaky)

    # Execute: the upload is still accepted; its entry waits in the outbox
    r = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob())
    assert r.status_code == 200
    waiting = harness.state.repo.count_ledger_entries_waiting()
    harness.state.orchestrator.tick()  # the ticker drains it

    # Assert
    assert waiting == 1 and calls["n"] >= 2
    assert _accepted(harness) == ["edge_0"]
    assert harness.state.repo.count_ledger_entries_waiting() == 0


def test_entries_left_by_a_crash_are_appended_at_the_next_start_exactly_once(tmp_path: Path) -> None:
    import sqlite3

    # Prepare: a round's updates and its close committed, their entries in the outbox, and "a crash":
    # this process never appends them, except the first, which reached the log before the crash
    # (killed between the append and the outbox delete).
    config = config_for(tmp_path)
    for h in make_harness(tmp_path):
        rid = h.open_round()
        ledger = h.state.ledger
        assert ledger is not None
        ledger.drain = lambda outbox: 0  # type: ignore[method-assign]
        for d in ("edge_0", "edge_1", "edge_2"):
            assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
        assert h.state.repo.count_ledger_entries_waiting() == 5  # 3 updates, round_closed, aggregate_published
        (first,) = sqlite3.connect(tmp_path / "qflare.db").execute(
            "select entry from ledger_outbox order by seq limit 1").fetchone()
        ledger.record(decode_event(first))
        assert _accepted(h) == ["edge_0"]

    # Execute: the next start
    state = build_state(config, admin_token=ADMIN)
    try:
        state.orchestrator.bootstrap()
        ledger = state.ledger
        assert ledger is not None
        events = [decode_event(e) for e in ledger.store.read_entries(0, ledger.store.size())]
        waiting = state.repo.count_ledger_entries_waiting()
        ledger.checkpoint()
        report = verify_log(ledger.store, ledger.log_key, origin=ledger.origin, entry_key=ledger.log_key.verify_key())
    finally:
        state.close()

    # Assert: every entry once, in the order committed, and the log verifies
    accepted = [e.device_id for e in events if isinstance(e, UpdateAccepted)]
    assert accepted == ["edge_0", "edge_1", "edge_2"]
    assert sum(isinstance(e, AggregatePublished) for e in events) == 1
    assert [e.EVENT for e in events][-2:] == ["round_closed", "aggregate_published"]
    assert waiting == 0
    assert report.ok and report.signed_entries == 4
