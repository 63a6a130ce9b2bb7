"""The device request's hot path (docs/benchmarks.md, "Where a 100-client round goes"): one read of the device
row, one commit (the nonce with last_seen) and one worker-thread hop per request, and a replay still
refused with 409 and no state change, last_seen included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import qflare.server.routes.device as device_routes
from qflare.server.gateway import TOUCH_INTERVAL_SECONDS
from tests.server.conftest import ADMIN, Harness

TASK = "/v1/device/task"


def _last_seen(h: Harness, device_id: str) -> float | None:
    record = h.state.repo.get_device(device_id)
    assert record is not None
    return record.last_seen_at


def test_a_replay_is_refused_and_writes_neither_its_nonce_nor_last_seen(harness: Harness) -> None:
    # Prepare: a request accepted at t0 (it sets last_seen in its nonce's transaction)
    envelope, opener = harness.seal("edge_0", TASK)
    t0 = harness.clock()
    assert harness.send(TASK, envelope, opener).status_code == 200
    assert _last_seen(harness, "edge_0") == t0
    nonces = harness.state.repo.count_nonces()
    snapshot = harness.snapshot()

    # Execute: the same bytes again, after last_seen would be written again (still inside the window)
    harness.clock.advance(TOUCH_INTERVAL_SECONDS + 1)
    reply = harness.send(TASK, envelope)

    # Assert: 409, and the refused copy's transaction left nothing (nonce, last_seen, rounds, updates)
    assert reply.status_code == 409 and b"replay" in reply.raw
    assert _last_seen(harness, "edge_0") == t0
    assert harness.state.repo.count_nonces() == nonces and harness.snapshot() == snapshot
    # A fresh request then records both (the refused copy did not stop this process writing last_seen).
    assert harness.post("edge_0", TASK).status_code == 200
    assert _last_seen(harness, "edge_0") == harness.clock() and harness.state.repo.count_nonces() == nonces + 1


def test_last_seen_is_written_at_most_once_per_interval(harness: Harness) -> None:
    t0 = harness.clock()
    assert harness.post("edge_0", TASK).status_code == 200
    harness.clock.advance(TOUCH_INTERVAL_SECONDS / 2)
    assert harness.post("edge_0", TASK).status_code == 200
    assert _last_seen(harness, "edge_0") == t0  # a liveness hint: not rewritten moments later
    harness.clock.advance(TOUCH_INTERVAL_SECONDS)
    assert harness.post("edge_0", TASK).status_code == 200
    assert _last_seen(harness, "edge_0") == harness.clock()


def test_an_upload_reads_its_device_row_once(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    rid = harness.open_round()
    repo = harness.state.repo
    reads: list[str] = []
    real = repo.get_device

    def counted(device_id: str) -> Any:
        reads.append(device_id)
        return real(device_id)

    monkeypatch.setattr(repo, "get_device", counted)

    # Execute
    reply = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob())

    # Assert: accepted, and the gateway's read was the only one (the cap check used the same row)
    assert reply.status_code == 200, reply.text
    assert reads == ["edge_0"] and repo.count_updates() == 1


def test_every_device_request_is_one_worker_thread_hop(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count the hand-offs the device routes make to the thread pool
    hops: list[str] = []
    real = device_routes.run_in_threadpool

    async def counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__qualname__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(device_routes, "run_in_threadpool", counted)
    rid = harness.open_round()
    hops.clear()

    # Execute / Assert: task, model download, upload, heartbeat: one hop each
    for path, body in ((TASK, b""), ("/v1/device/model/0", b""),
                       (f"/v1/device/rounds/{rid}/update", harness.update_blob()), ("/v1/device/heartbeat", b"")):
        before = len(hops)
        reply = harness.post("edge_0", path, body)
        assert reply.status_code == 200, (path, reply.text)
        assert len(hops) - before == 1, (path, hops[before:])
    # A refusal too (a duplicate upload: authenticated, refused sealed by the work), with no state change
    snapshot, before = harness.snapshot(), len(hops)
    reply = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob())
    assert reply.status_code == 409 and reply.sealed and b"duplicate_update" in reply.raw
    assert len(hops) - before == 1 and harness.snapshot() == snapshot


def test_the_status_counts_in_sql_what_it_reports(harness: Harness) -> None:
    # The status (polled 4/s by qflare simulate) counts the round's updates and the active devices in SQL.
    rid = harness.open_round()
    assert harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    repo = harness.state.repo
    window = harness.state.config.rounds.active_window_seconds
    assert repo.count_updates(rid) == len(repo.round_updates(rid)) == 1 and repo.count_updates(rid + 1) == 0
    assert repo.count_active_devices(since=harness.clock() - window) == len(
        repo.active_devices(since=harness.clock() - window)) == len(harness.keys)
    status = harness.client.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert status["current_round_updates"] == 1 and status["devices_active"] == len(harness.keys)
