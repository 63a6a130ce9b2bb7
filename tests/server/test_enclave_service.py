"""One enclave service in front of several workers (``server/enclave_service.py``), in process on PostgreSQL:
any worker validates and counts, only the fenced round owner begins, aborts and finalizes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qflare.config import EnclaveHostConfig, GlobalConfig, ServerConfig
from qflare.crypto import SigningKey
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import serialize_public_key
from qflare.enclave.channel import SharedRegion
from qflare.errors import Conflict, EnclaveError
from qflare.fl.port import SealedUpdate
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.server.enclave_service import EnclaveService, RemoteEnclaveAggregator
from qflare.server.enrollment import enroll_by_operator
from qflare.server.lease import PostgresLease
from qflare.server.rounds import initial_model_blob
from qflare.server.storage import Repository
from qflare.server.workers import start_enclave_service
from tests.server.pg import fresh_schema

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SPEC = ModelSpec.from_model(get_task("digits").build_model())


@dataclass
class FixedLease:
    """A lease that still believes it holds ``token`` (an owner that has not noticed it lost the lease)."""

    token: int

    def held(self) -> bool:
        return True


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[GlobalConfig, Repository, EnclaveService]]:
    with fresh_schema("qflare_encsvc") as url:
        cfg = GlobalConfig(task="digits", enclave=EnclaveHostConfig(backend="simulated", work_dir=str(tmp_path / "e")),
                           server=ServerConfig(db_url=url, key_dir=str(tmp_path / "keys")))
        repo = Repository(url)
        for i in range(3):
            enroll_by_operator(repo, f"dev_{i}", serialize_public_key(_key(i).public_key()).decode(), "mlkem",
                               now=time.time())
        service = start_enclave_service(cfg)
        try:
            yield cfg, repo, service
        finally:
            service.close()
            repo.close()


_KEYS: dict[int, SigningKey] = {}


def _key(i: int) -> SigningKey:
    return _KEYS.setdefault(i, SigningKey.generate())


def _update(client: RemoteEnclaveAggregator, i: int, rid: int, arrays: dict[str, np.ndarray], n: int) -> SealedUpdate:
    blob = dump_arrays(arrays, {"num_examples": str(n), "train_loss": "0.5"})
    envelope, _ = seal_request(_key(i), client.public_keys().kem, device_id=f"dev_{i}", method="POST",
                               path=f"/v1/device/rounds/{rid}/update", round_id=rid, payload=blob, now=time.time())
    return SealedUpdate(envelope=envelope, allowed_key_sources=("mlkem",))


def _shifted(base: dict[str, np.ndarray], by: float) -> dict[str, np.ndarray]:
    return {k: (v + by).astype(v.dtype) for k, v in base.items()}


def _store(repo: Repository, rid: int, device: str, v) -> None:  # type: ignore[no-untyped-def]
    repo.add_update(rid, device, num_examples=v.num_examples, train_loss=v.train_loss, sha256=v.sha256,
                    blob=v.stored, now=time.time())


def _owner_with_one_uncounted(setup, selected: list[str]):  # type: ignore[no-untyped-def]
    """The round owner with round 1 open on ``selected``: dev_0's update (5 examples) stored and counted,
    dev_1's (15, base + 1.0) stored but never counted (its worker died). Returns repo, service, owner,
    the base model (blob and arrays) and the two validated updates."""
    cfg, repo, service = setup
    lease = PostgresLease(repo.engine)
    assert lease.held()
    owner = RemoteEnclaveAggregator(service.socket_path, lease=lease)
    base_blob = initial_model_blob("digits", 0)
    base, _ = load_arrays(base_blob, SPEC)
    owner.begin_round(1, base_blob, SPEC)
    repo.open_round(1, base_version=0, selected=selected, now=time.time(), deadline_at=time.time() + 60)
    v0 = owner.validate(1, _update(owner, 0, 1, base, 5))
    _store(repo, 1, "dev_0", v0)
    owner.accumulate(v0)
    v1 = owner.validate(1, _update(owner, 1, 1, _shifted(base, 1.0), 15))
    _store(repo, 1, "dev_1", v1)
    return repo, service, owner, base_blob, base, v0, v1


def test_followers_cannot_control_rounds_and_a_stale_owner_cannot_finalize(setup) -> None:  # type: ignore[no-untyped-def]
    # Prepare: worker A owns the rounds, worker B follows; round 1 begun by A
    cfg, repo, service = setup
    lease_a, lease_b = PostgresLease(repo.engine), PostgresLease(repo.engine)
    assert lease_a.held() and not lease_b.held()
    a = RemoteEnclaveAggregator(service.socket_path, lease=lease_a)
    b = RemoteEnclaveAggregator(service.socket_path, lease=lease_b)
    base_blob = initial_model_blob("digits", 0)
    base, _ = load_arrays(base_blob, SPEC)
    a.begin_round(1, base_blob, SPEC)
    repo.open_round(1, base_version=0, selected=["dev_0", "dev_1"], now=time.time(), deadline_at=time.time() + 60)

    # Execute: B (a follower) tries to restart and abort the round; each worker accepts one update
    b.begin_round(1, dump_arrays(_shifted(base, 1.0), {}), SPEC)
    b.abort_round(1)
    v0 = a.validate(1, _update(a, 0, 1, _shifted(base, 0.1), 10))
    _store(repo, 1, "dev_0", v0)
    a.accumulate(v0)
    v1 = b.validate(1, _update(b, 1, 1, _shifted(base, 0.4), 30))
    _store(repo, 1, "dev_1", v1)
    b.accumulate(v1)
    # A loses its lease (its connection dies) without noticing; B takes it over
    stale = RemoteEnclaveAggregator(service.socket_path, lease=FixedLease(lease_a.token))  # type: ignore[arg-type]
    lease_a.release()
    assert lease_b.held() and lease_b.token > stale.lease.token  # type: ignore[union-attr]

    # Assert: the round survived B's attempts as a follower; the stale owner can neither finalize nor abort
    assert service.aggregator.counted_updates(1) == 2
    for call in (lambda: stale.finalize(1), lambda: stale.abort_round(1),
                 lambda: stale.begin_round(1, dump_arrays(_shifted(base, 2.0), {}), SPEC)):
        with pytest.raises(Conflict) as info:
            call()
        assert info.value.reason == "stale_round_owner"
    assert service.aggregator.counted_updates(1) == 2
    # The new owner finalizes both updates: FedAvg weighted by examples, computed independently
    model, _ = load_arrays(b.finalize(1), SPEC)
    for k, w in base.items():
        expected = (10 * (w + 0.1).astype(w.dtype).astype(np.float64) + 30 * (w + 0.4).astype(w.dtype)) / 40
        np.testing.assert_allclose(model[k], expected, rtol=0, atol=1e-6)
    assert b.model_signature(1) and a.model_signature(1) == b.model_signature(1)  # any worker can read it


def test_finalize_is_refused_until_the_enclave_has_every_stored_update(setup) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the owner counts dev_0; dev_1's update was committed by a worker killed before it counted it
    repo, service, owner, base_blob, base, v0, v1 = _owner_with_one_uncounted(setup, ["dev_0", "dev_1"])

    # Execute / Assert: refused with nothing signed; after the replay from the database it closes with both
    with pytest.raises(Conflict) as info:
        owner.finalize(1)
    assert info.value.reason == "round_changed"
    owner.begin_round(1, base_blob, SPEC)  # the same base: a no-op, the count is kept
    assert service.aggregator.counted_updates(1) == 1
    owner.replay(1, v1.stored)
    owner.replay(1, v0.stored)  # counted once however often it is replayed
    model, _ = load_arrays(owner.finalize(1), SPEC)
    for k, w in base.items():
        expected = (5 * w.astype(np.float64) + 15 * (w + 1.0).astype(w.dtype)) / 20
        np.testing.assert_allclose(model[k], expected, rtol=0, atol=1e-6)


def test_the_enclave_says_which_stored_updates_it_counts_from_their_heads_alone(setup) -> None:  # type: ignore[no-untyped-def]
    # Prepare: dev_0's update counted by a worker; dev_1's committed but never counted (its worker died)
    repo, service, owner, _, _, v0, _ = _owner_with_one_uncounted(setup, ["dev_0", "dev_1", "dev_2"])
    heads = repo.update_heads(1, ["dev_0", "dev_1", "dev_2"], size=owner.HEAD_BYTES)

    # Execute / Assert: the heads are a few KB of 150 KB updates, and name only what the enclave counted
    assert set(heads) == {"dev_0", "dev_1"} and heads["dev_0"] == v0.stored[:owner.HEAD_BYTES]
    assert owner.counted_devices(1, heads) == {"dev_0"}
    assert owner.counted_devices(2, heads) == set()  # another round's ids count for nothing
    # bad heads (truncated, garbage, empty) are not counted: the owner reads and replays those whole
    assert owner.counted_devices(1, {"dev_0": heads["dev_0"][:12], "dev_1": b"\x00" * 64, "dev_2": b""}) == set()
    with pytest.raises(EnclaveError) as info:  # the service refuses a malformed question
        owner.enclave._call("counted", {"round_id": 1, "update_ids": "not a list"})
    assert info.value.reason == "ecall_refused"
    assert service.aggregator.counted_updates(1) == 1  # nothing changed in the enclave
    owner.replay(1, repo.update_blob(1, "dev_1") or b"")
    assert owner.counted_devices(1, heads) == {"dev_0", "dev_1"}


def test_concurrent_workers_each_get_their_own_answer_from_the_enclave(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Prepare: two workers' connections; the host copies an answer out of the shared region slowly (a
    # worker thread descheduled on a loaded machine): in the 4-worker run, 2 devices could not open
    # their task answers (decryption_failed)
    cfg, repo, service = setup
    workers = [RemoteEnclaveAggregator(service.socket_path) for _ in range(2)]
    take = SharedRegion.take

    def slow_take(self, region, *, side):  # type: ignore[no-untyped-def]
        if side == "output":
            time.sleep(0.05)
        return take(self, region, side=side)

    monkeypatch.setattr(SharedRegion, "take", slow_take)
    got: dict[int, list[bytes]] = {0: [], 1: []}
    sent: dict[int, list[bytes]] = {0: [], 1: []}

    def work(w: int) -> None:
        for k in range(6):
            payload = bytes([w + 1]) * (100 + 50 * w + k)
            envelope, _ = seal_request(_key(w), workers[w].public_keys().kem, device_id=f"dev_{w}", method="POST",
                                       path="/v1/device/heartbeat", round_id=None, payload=payload, now=time.time())
            sent[w].append(payload)
            got[w].append(workers[w].open_request(envelope, allowed_key_sources=["mlkem"]).payload)

    # Execute
    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    # Assert: every worker got the payload of its own request back, never the other's
    assert got == sent
