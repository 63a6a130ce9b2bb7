"""The storage layer on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``, a schema per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.errors import Conflict, DuplicateUpdate, NotFound, ReplayDetected
from qflare.server.storage import Repository
from tests.server.pg import fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "sqlite":
        r = Repository(f"sqlite:///{tmp_path / 'db.sqlite'}")
        yield r
        r.close()
        return
    with fresh_schema() as url:
        r = Repository(url)
        try:
            yield r
        finally:
            r.close()


def test_devices_register_revoke_and_refuse_duplicates(repo: Repository) -> None:
    repo.add_device("edge_01", now=1.0, public_key=b"pk", fingerprint="fp")
    with pytest.raises(Conflict) as info:
        repo.add_device("edge_01", now=2.0, public_key=b"pk2", fingerprint="fp2")
    assert info.value.reason == "device_exists"
    repo.touch_device("edge_01", now=5.0)
    assert repo.active_devices(since=4.0) == ["edge_01"]
    rec = repo.revoke_device("edge_01", now=6.0)
    assert rec.revoked and rec.revoked_at == 6.0
    assert repo.active_devices(since=0.0) == []
    with pytest.raises(NotFound):
        repo.revoke_device("nobody", now=7.0)


def test_updates_are_unique_per_round_and_device(repo: Repository) -> None:
    repo.add_device("edge_01", now=1.0, public_key=b"pk", fingerprint="fp")
    repo.open_round(1, base_version=0, selected=["edge_01"], now=1.0, deadline_at=9.0)
    repo.add_update(1, "edge_01", num_examples=3, train_loss=0.1, sha256="a" * 64, blob=b"xyz", now=2.0)
    with pytest.raises(DuplicateUpdate):
        repo.add_update(1, "edge_01", num_examples=3, train_loss=0.1, sha256="b" * 64, blob=b"abc", now=3.0)
    assert [u.sha256 for u in repo.round_updates(1)] == ["a" * 64]
    assert [b for _, b in repo.iter_update_blobs(1)] == [b"xyz"]


def test_closing_a_round_stores_the_model_atomically_and_drops_blobs(repo: Repository) -> None:
    repo.add_device("edge_01", now=1.0, public_key=b"pk", fingerprint="fp")
    repo.add_model(0, blob=b"m0", sha256="0" * 64, spec_fingerprint="f", round_id=None, now=0.0)
    repo.open_round(1, base_version=0, selected=["edge_01"], now=1.0, deadline_at=9.0)
    repo.add_update(1, "edge_01", num_examples=3, train_loss=None, sha256="a" * 64, blob=b"xyz", now=2.0)
    rnd = repo.close_round(1, status="aggregated", reason="all_reported", now=3.0,
                           new_model=(1, b"m1", "1" * 64, "f", b"sig"), metrics={"accuracy": 0.5})
    assert rnd.new_version == 1 and rnd.metrics == {"accuracy": 0.5}
    assert repo.model_blob(1) == b"m1" and repo.latest_model().version == 1  # type: ignore[union-attr]
    assert list(repo.iter_update_blobs(1)) == []
    with pytest.raises(Conflict):
        repo.close_round(1, status="failed", reason="x", now=4.0)
    with pytest.raises(Conflict):
        repo.add_update(1, "edge_01", num_examples=1, train_loss=None, sha256="c" * 64, blob=b"", now=5.0)


def test_events_are_counted_by_kind(repo: Repository) -> None:
    repo.add_event("update_rejected", now=1.0, device_id="d", reason="non_finite")
    repo.add_event("update_rejected", now=2.0, reason="malformed_tensor")
    repo.add_event("round_opened", now=3.0, round_id=1)
    assert repo.count_events("update_rejected") == 2
    assert [e.reason for e in repo.list_events(kind="update_rejected")] == ["malformed_tensor", "non_finite"]


def test_nonces_are_atomic_and_expire(repo: Repository) -> None:
    from qflare.errors import ReplayDetected

    repo.record_nonce("edge_01", "ab" * 16, expires_at=10.0)
    assert repo.nonce_seen("edge_01", "ab" * 16) and not repo.nonce_seen("edge_02", "ab" * 16)
    with pytest.raises(ReplayDetected):
        repo.record_nonce("edge_01", "ab" * 16, expires_at=10.0)
    repo.record_nonce("edge_01", "cd" * 16, expires_at=20.0)
    assert repo.purge_nonces(now=15.0) == 1
    assert repo.count_nonces() == 1 and not repo.nonce_seen("edge_01", "ab" * 16)


def test_enrollment_tokens_are_one_time_and_expire(repo: Repository) -> None:
    from qflare.errors import AuthenticationError

    repo.add_enrollment_token("t1", device_id=None, key_source="mlkem", now=0.0, expires_at=100.0)
    repo.add_enrollment_token("t2", device_id="edge_09", key_source="hybrid", now=0.0, expires_at=100.0)
    rec = repo.enroll_with_token("t1", "edge_01", public_key=b"pk", fingerprint="fp", now=5.0)
    assert rec.device_id == "edge_01" and rec.key_source == "mlkem"
    with pytest.raises(AuthenticationError) as used:
        repo.enroll_with_token("t1", "edge_02", public_key=b"pk", fingerprint="fp", now=6.0)
    assert used.value.reason == "enrollment_token_used"
    with pytest.raises(AuthenticationError) as other:
        repo.enroll_with_token("t2", "edge_02", public_key=b"pk", fingerprint="fp", now=6.0)
    assert other.value.reason == "bad_enrollment_token"
    with pytest.raises(AuthenticationError) as expired:
        repo.enroll_with_token("t2", "edge_09", public_key=b"pk", fingerprint="fp", now=101.0)
    assert expired.value.reason == "enrollment_token_expired"
    assert repo.get_device("edge_02") is None and repo.get_device("edge_09") is None


def test_sqlite_durability_setting_is_the_documented_one(tmp_path: Path) -> None:
    # docs/architecture.md: WAL with synchronous=NORMAL (1); a change must change the docs too.
    repo = Repository(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        with repo.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    finally:
        repo.close()


def test_a_state_change_and_its_event_commit_together_or_not_at_all(tmp_path: Path) -> None:
    # Prepare: a device, then an enrollment that fails (duplicate id) with an event attached.
    from qflare.server.storage import NewEvent

    repo = Repository(f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        repo.add_device("edge_01", now=1.0, public_key=b"k", fingerprint="f",
                        event=NewEvent("device_enrolled", device_id="edge_01"))
        # Execute
        with pytest.raises(Conflict):
            repo.add_device("edge_01", now=2.0, public_key=b"k", fingerprint="f",
                            event=NewEvent("device_enrolled", device_id="edge_01"))
        repo.revoke_device("edge_01", now=3.0, event=NewEvent("device_revoked", device_id="edge_01"))
        repo.revoke_device("edge_01", now=4.0, event=NewEvent("device_revoked", device_id="edge_01"))

        # Assert: one event per state change that happened; none for the refused one or the no-op.
        assert [e.kind for e in reversed(repo.list_events())] == ["device_enrolled", "device_revoked"]
    finally:
        repo.close()


def test_a_request_records_its_nonce_and_last_seen_in_one_transaction(repo: Repository) -> None:
    # Prepare
    repo.add_device("edge_01", now=0.0, public_key=b"pk", fingerprint="fp")

    # Execute / Assert: the nonce and last_seen together; within the interval, last_seen is kept
    repo.record_request("edge_01", "ab" * 16, "k1", expires_at=100.0, seen_at=10.0, seen_interval=2.0)
    assert repo.get_device("edge_01").last_seen_at == 10.0  # type: ignore[union-attr]
    repo.record_request("edge_01", "cd" * 16, "k2", expires_at=100.0, seen_at=11.0, seen_interval=2.0)
    assert repo.get_device("edge_01").last_seen_at == 10.0  # type: ignore[union-attr]
    # A replayed nonce, or a reused KEM ciphertext under a fresh nonce: refused, and neither is written
    with pytest.raises(ReplayDetected):
        repo.record_request("edge_01", "ab" * 16, None, expires_at=100.0, seen_at=20.0, seen_interval=2.0)
    with pytest.raises(ReplayDetected) as info:
        repo.record_request("edge_01", "ef" * 16, "k1", expires_at=100.0, seen_at=20.0, seen_interval=2.0)
    assert info.value.reason == "kem_ciphertext_reused"
    assert repo.get_device("edge_01").last_seen_at == 10.0 and repo.count_nonces() == 2  # type: ignore[union-attr]
    repo.record_request("edge_01", "ef" * 16, "k3", expires_at=100.0, seen_at=20.0, seen_interval=2.0)
    assert repo.get_device("edge_01").last_seen_at == 20.0 and repo.count_nonces() == 3  # type: ignore[union-attr]
