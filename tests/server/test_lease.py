"""Round ownership across processes: one lease holder closes rounds, every worker accepts uploads.

Issue 13's defect first: two servers on one PostgreSQL database, the second accepted the quorum and the
first, seeing nothing, failed the round with ``deadline_no_quorum``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from qflare.errors import ConfigError, Conflict
from qflare.server.app import build_state, create_app
from qflare.server.lease import PostgresLease, SqliteLease, open_lease
from qflare.server.storage import Repository
from tests.server.conftest import _KEYS, ADMIN, FakeClock, Harness, config_for, enroll
from tests.server.pg import fresh_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema("qflare_lease") as url:
        yield url


def _server(tmp_path: Path, url: str, clock: FakeClock, keys: dict[str, object], **rounds: object) -> Iterator[Harness]:
    cfg = config_for(tmp_path, **rounds)
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"db_url": url})})
    repo = Repository(url)
    state = build_state(cfg, admin_token=ADMIN, clock=clock, repo=repo, lease=PostgresLease(repo.engine))
    try:
        with TestClient(create_app(state, run_ticker=False)) as client:
            yield Harness(client=client, state=state, clock=clock, keys=keys)  # type: ignore[arg-type]
    finally:
        state.close()


@pytest.fixture
def two_servers(tmp_path: Path, pg_url: str) -> Iterator[tuple[Harness, Harness]]:
    clock = FakeClock()
    keys = {f"edge_{i}": _KEYS[i] for i in range(3)}
    first = _server(tmp_path, pg_url, clock, keys, close_on_quorum=False)
    a = next(first)  # started first: takes the lease
    second = _server(tmp_path, pg_url, clock, keys, close_on_quorum=False)
    b = next(second)
    for d, k in keys.items():
        enroll(a.client, d, k)  # type: ignore[arg-type]
    try:
        yield a, b
    finally:
        for gen in (second, first):
            with pytest.raises(StopIteration):
                next(gen)


def _upload(h: Harness, rid: int, device: str) -> int:
    return h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code


@pytest.mark.postgres
def test_updates_accepted_by_a_follower_are_aggregated_by_the_owner(two_servers: tuple[Harness, Harness]) -> None:
    # Prepare: A owns the rounds, B follows; B accepts the quorum
    a, b = two_servers
    assert a.state.orchestrator.lease.held() and not b.state.orchestrator.lease.held()
    a.poll_all()
    a.state.orchestrator.tick()
    rnd = a.state.orchestrator.current_round()
    assert rnd is not None
    b.state.orchestrator.tick()  # the follower closes nothing
    assert _upload(b, rnd.round_id, "edge_0") == 200 and _upload(b, rnd.round_id, "edge_1") == 200

    # Execute: the deadline passes; the follower ticks first, then the owner
    a.clock.advance(61)
    b.state.orchestrator.tick()
    assert a.state.repo.get_round(rnd.round_id).status == "open"  # type: ignore[union-attr]
    a.state.orchestrator.tick()

    # Assert: aggregated with both updates (before: deadline_no_quorum, both discarded)
    closed = a.state.repo.get_round(rnd.round_id)
    assert closed is not None and closed.status == "aggregated" and closed.close_reason == "deadline"
    assert closed.metrics is not None and closed.metrics["num_updates"] == 2


@pytest.mark.postgres
def test_updates_spread_over_both_servers_close_the_round_once(two_servers: tuple[Harness, Harness]) -> None:
    a, b = two_servers
    a.poll_all()
    a.state.orchestrator.tick()
    rid = a.state.orchestrator.current_round().round_id  # type: ignore[union-attr]
    assert _upload(a, rid, "edge_0") == 200
    assert _upload(b, rid, "edge_1") == 200
    assert _upload(b, rid, "edge_2") == 200
    assert _upload(a, rid, "edge_2") == 409  # the duplicate is refused by the other server too
    a.state.orchestrator.tick()  # all reported, counted from the database
    closed = a.state.repo.get_round(rid)
    assert closed is not None and closed.status == "aggregated" and closed.metrics["num_updates"] == 3  # type: ignore[index]


@pytest.mark.postgres
def test_a_replay_sent_to_the_other_server_is_refused(two_servers: tuple[Harness, Harness]) -> None:
    a, b = two_servers
    envelope, opener = a.seal("edge_1", "/v1/device/heartbeat")
    assert a.send("/v1/device/heartbeat", envelope, opener).status_code == 200
    assert b.send("/v1/device/heartbeat", envelope).status_code == 409


@pytest.mark.postgres
def test_the_lease_passes_when_its_holder_goes(pg_url: str) -> None:
    repo = Repository(pg_url)
    try:
        first, second = PostgresLease(repo.engine), PostgresLease(repo.engine)
        assert first.held() and not second.held()
        token = first.token
        first.release()
        assert second.held() and second.token > token
        assert not PostgresLease(repo.engine).held()
        second.release()
    finally:
        repo.close()


@pytest.mark.postgres
def test_a_close_counting_fewer_updates_than_stored_is_refused(pg_url: str) -> None:
    repo = Repository(pg_url)
    try:
        repo.add_device("a", now=1.0, public_key=b"pk", fingerprint="fp")
        repo.open_round(1, base_version=0, selected=["a", "b"], now=1.0, deadline_at=9.0)
        repo.add_update(1, "a", num_examples=1, train_loss=None, sha256="0" * 64, blob=b"x", now=2.0)
        with pytest.raises(Conflict) as info:
            repo.close_round(1, status="failed", reason="deadline_no_quorum", now=3.0, expect_updates=0)
        assert info.value.reason == "round_changed"
        assert repo.get_round(1).status == "open" and repo.update_blob(1, "a") == b"x"  # type: ignore[union-attr]
    finally:
        repo.close()


def test_an_upload_waits_for_the_close_barrier_and_finds_the_round_closed(pg_url: str) -> None:
    import threading
    import time

    # Prepare: round 1 open, the owner inside its close barrier
    repo = Repository(pg_url)
    lease = PostgresLease(repo.engine)
    try:
        assert lease.held()
        for d in ("a", "b"):
            repo.add_device(d, now=1.0, public_key=b"pk" + d.encode(), fingerprint="fp" + d)
        repo.open_round(1, base_version=0, selected=["a", "b"], now=1.0, deadline_at=9.0)
        repo.add_update(1, "a", num_examples=1, train_loss=None, sha256="0" * 64, blob=b"x", now=2.0)
        outcome: list[str] = []

        def upload() -> None:
            try:
                repo.add_update(1, "b", num_examples=1, train_loss=None, sha256="1" * 64, blob=b"y", now=3.0)
                outcome.append("stored")
            except Conflict as exc:
                outcome.append(exc.reason)

        # Execute: another worker's upload arrives while the owner counts and closes
        with lease.closing(1):
            late = threading.Thread(target=upload)
            late.start()
            time.sleep(1.0)
            waited = not outcome  # still waiting for the barrier
            repo.close_round(1, status="failed", reason="deadline_no_quorum", now=4.0, expect_updates=1)
        late.join(30)

        # Assert: it waited, then found the round closed; the close counted what was stored before
        assert waited and outcome == ["round_closed"]
        assert repo.update_device_ids(1) == ["a"]
    finally:
        lease.release()
        repo.close()


def test_a_stale_owner_may_not_enter_the_close_barrier(pg_url: str) -> None:
    repo = Repository(pg_url)
    old, new = PostgresLease(repo.engine), PostgresLease(repo.engine)
    try:
        assert old.held()
        token = old.token
        old.release()
        assert new.held() and new.token > token
        old._token = token  # an owner that has not noticed it lost the lease
        with pytest.raises(Conflict) as info, old.closing(1):
            pass
        assert info.value.reason == "stale_round_owner"
        with new.closing(1):  # the current owner may
            pass
    finally:
        new.release()
        repo.close()


@pytest.mark.postgres
def test_a_second_server_with_the_enclave_refuses_to_start(pg_url: str) -> None:
    repo = Repository(pg_url)
    try:
        owner = open_lease(repo.engine, pg_url, shared_ok=False)
        with pytest.raises(ConfigError) as info:
            open_lease(repo.engine, pg_url, shared_ok=False)
        assert info.value.reason == "database_in_use" and "\n" not in info.value.message
        assert "only one server may run per database" in info.value.message and "127.0.0.1" in info.value.message
        assert open_lease(repo.engine, pg_url, shared_ok=True).held() is False  # a follower may share
        owner.release()
    finally:
        repo.close()


def test_sqlite_is_single_process(tmp_path: Path) -> None:
    db = tmp_path / "qflare.db"
    first = SqliteLease(db)
    with pytest.raises(ConfigError) as info:
        SqliteLease(db)
    assert info.value.reason == "database_in_use" and "SQLite is single-process" in info.value.message
    first.release()
    SqliteLease(db).release()  # free again once released


@pytest.mark.postgres
def test_a_holder_whose_connection_dies_loses_the_lease_to_the_next(pg_url: str) -> None:
    # Prepare: the holder probes its connection with short keepalives (a SIGKILLed holder is noticed)
    repo = Repository(pg_url)
    try:
        holder, follower = PostgresLease(repo.engine), PostgresLease(repo.engine)
        assert holder.held()
        assert holder._conn is not None
        assert holder._conn.execute(text("SHOW tcp_keepalives_idle")).scalar() == "5"
        pid = holder._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert not follower.held()

        # Execute: the database ends the holder's session (what failed keepalives do)
        with repo.engine.begin() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        # Assert (pg_terminate_backend only signals the backend: its session ends, and the lock is freed, soon after)
        import time

        deadline = time.monotonic() + 10
        while not follower.held() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert follower.held() and not holder.held()
        follower.release()
    finally:
        repo.close()


@pytest.mark.postgres
def test_a_restarted_server_waits_for_the_lease_of_its_dead_predecessor(pg_url: str) -> None:
    import threading

    repo = Repository(pg_url)
    try:
        old = open_lease(repo.engine, pg_url, shared_ok=False)
        threading.Timer(1.5, old.release).start()
        new = open_lease(repo.engine, pg_url, shared_ok=False, wait_seconds=20)
        assert new.held()
        new.release()
    finally:
        repo.close()
