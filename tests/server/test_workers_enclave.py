"""``qflare server --workers 2`` with the simulated enclave on PostgreSQL, over real HTTP: both workers
forward to one enclave service; the round owner finalizes inside it.

Every request opens its own connection, so the kernel hands it to either worker.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from qflare.crypto import SigningKey
from qflare.crypto.keyfile import parse_public_key, serialize_public_key
from qflare.enclave.quote import EnclavePublicKeys
from qflare.enclave.statements import verify_model_signature
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.ledger.entries import UpdateAccepted, decode_event
from qflare.server.rounds import initial_model_blob
from qflare.server.storage import Repository
from qflare.server.storage.ledger_store import SqlLogStore
from qflare.types import NDArrays
from tests.server.pg import fresh_schema
from tests.server.test_workers import ADMIN, _post, _serve_workers, _upload_as_a_device

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {ADMIN}"}
SPEC = ModelSpec.from_model(get_task("digits").build_model())
BASE, _ = load_arrays(initial_model_blob("digits", 0), SPEC)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema("qflare_wenc") as url:
        yield url


def _enroll(url: str, n: int) -> tuple[dict[str, SigningKey], object]:
    keys = {f"dev_{i:03d}": SigningKey.generate() for i in range(n)}
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as admin:
        for d, k in keys.items():
            r = admin.post("/v1/admin/devices", json={"device_id": d, "public_key":
                                                       serialize_public_key(k.public_key()).decode()})
            assert r.status_code == 201, r.text
    server_pub = parse_public_key(httpx.get(f"{url}/v1/server/keys").json()["kem_public_key"].encode())
    return keys, server_pub


def _open_round(url: str, keys: dict[str, SigningKey], server_pub: object) -> int:
    with ThreadPoolExecutor(4) as pool:
        beats = list(pool.map(lambda d: _post(url, keys[d], server_pub, d, "/v1/device/heartbeat").status_code, keys))
    assert beats == [200] * len(keys)
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{url}/v1/admin/status", headers=AUTH).json()).get("current_round") is None:
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    return int(status["current_round"]["round_id"])


def _arrays(i: int) -> NDArrays:
    """Device i's update: the base model shifted by a device-specific amount (so the aggregate is checkable)."""
    return {k: (v + np.float32(0.01 * (i + 1))).astype(v.dtype) for k, v in BASE.items()}


def _expected(weights: dict[int, int]) -> NDArrays:
    """FedAvg weighted by examples, computed here in float64 from the arrays the devices sent."""
    total = sum(weights.values())
    return {k: sum(n * _arrays(i)[k].astype(np.float64) for i, n in weights.items()) / total for k in BASE}


def _wait_aggregated(url: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/v1/admin/status", headers=AUTH).json()["rounds_completed"] < 1:
        assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.3)


def _check_round(url: str, pg_url: str, rid: int, weights: dict[int, int], devices: list[str]) -> None:
    """The round aggregated every device once; its model is the independent FedAvg, signed by the enclave."""
    nonce = os.urandom(16).hex()
    keys = EnclavePublicKeys.decode(base64.b64decode(httpx.get(f"{url}/v1/enclave/attestation",
                                                               params={"nonce": nonce}).json()["public_keys"]))
    repo = Repository(pg_url)
    store = SqlLogStore(repo.engine)
    try:
        rnd = repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated" and rnd.metrics is not None
        assert rnd.metrics["num_updates"] == len(weights)
        assert rnd.metrics["total_examples"] == sum(weights.values())
        assert sorted(repo.update_device_ids(rid)) == sorted(devices)
        assert rnd.new_version is not None
        blob = repo.model_blob(rnd.new_version)
        record = repo.get_model(rnd.new_version)
        assert record is not None and record.signature
        verify_model_signature(blob, record.signature, enclave_key=keys.signing, round_id=rid)
        model, _ = load_arrays(blob, SPEC)
        for k, want in _expected(weights).items():
            np.testing.assert_allclose(model[k], want, rtol=0, atol=1e-6)
        logged = [e.device_id for e in map(decode_event, store.read_entries(0, store.size()))
                  if isinstance(e, UpdateAccepted)]
        assert sorted(logged) == sorted(devices)  # each accepted update logged exactly once
    finally:
        repo.close()


def test_a_round_across_two_workers_with_one_enclave_counts_every_update_once(tmp_path: Path, pg_url: str) -> None:
    # Prepare: 24 devices; the server logs which worker forwarded each update to the enclave service
    n = 24
    served = _serve_workers(tmp_path, pg_url, n, enclave=True, args=("--log-level", "debug"))
    url = next(served)
    try:
        keys, server_pub = _enroll(url, n)
        rid = _open_round(url, keys, server_pub)

        def upload(i_d: tuple[int, str]) -> int:
            i, d = i_d
            blob = dump_arrays(_arrays(i), {"num_examples": str(i + 1), "train_loss": "0.5"})
            return _post(url, keys[d], server_pub, d, f"/v1/device/rounds/{rid}/update", blob,
                         round_id=rid).status_code

        # Execute: 24 uploads, 6 at a time, each on a new connection
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(upload, enumerate(keys)))

        # Assert: all accepted, through both workers, aggregated once each into the expected model
        assert codes == [200] * n
        _wait_aggregated(url, tmp_path)
        _check_round(url, pg_url, rid, {i: i + 1 for i in range(n)}, list(keys))
        log = (tmp_path / "server.log").read_text()
        pids = set(re.findall(r"update validated for round \d+ via worker pid (\d+)", log))
        assert len(re.findall(r"update validated for round", log)) == n
        assert len(pids) == 2, pids
    finally:
        served.close()


def test_a_replay_sent_to_another_worker_is_refused_with_the_enclave(tmp_path: Path, pg_url: str) -> None:
    # Prepare: two devices; dev_000's update accepted
    served = _serve_workers(tmp_path, pg_url, 2, enclave=True)
    url = next(served)
    try:
        from qflare.crypto.envelope import seal_request

        keys, server_pub = _enroll(url, 2)
        heartbeat, _ = seal_request(keys["dev_000"], server_pub, device_id="dev_000", method="POST",
                                    path="/v1/device/heartbeat", round_id=None, payload=b"", now=time.time())
        beat_codes = [httpx.post(f"{url}/v1/device/heartbeat", content=heartbeat, timeout=30).status_code
                      for _ in range(8)]
        rid = _open_round(url, keys, server_pub)
        blob = dump_arrays(_arrays(0), {"num_examples": "3", "train_loss": "0.5"})
        update, _ = seal_request(keys["dev_000"], server_pub, device_id="dev_000", method="POST",
                                 path=f"/v1/device/rounds/{rid}/update", round_id=rid, payload=blob, now=time.time())

        # Execute: the same envelopes again, each on a new connection (either worker)
        codes = [httpx.post(f"{url}/v1/device/rounds/{rid}/update", content=update, timeout=60).status_code
                 for _ in range(6)]

        # Assert: one 200 each, every copy 409; the round holds the one update
        assert beat_codes[0] == 200 and beat_codes[1:] == [409] * 7
        assert codes[0] == 200 and codes[1:] == [409] * 5
        repo = Repository(pg_url)
        try:
            assert repo.update_device_ids(rid) == ["dev_000"]
        finally:
            repo.close()
    finally:
        served.close()


def test_a_worker_killed_mid_upload_with_the_enclave_loses_nothing_and_counts_nothing_twice(
        tmp_path: Path, pg_url: str) -> None:
    from qflare.server.faults import ENV

    # Prepare: two workers, each SIGKILLed right after the first update it commits, before it answers
    # (and before it counts it in the enclave); uvicorn starts a new worker in its place
    n = 6
    served = _serve_workers(tmp_path, pg_url, n, env={ENV: "after_commit@1"}, enclave=True)
    url = next(served)
    try:
        keys, server_pub = _enroll(url, n)
        rid = _open_round(url, keys, server_pub)

        # Execute
        outcomes = {d: _upload_as_a_device(url, keys[d], server_pub, d, rid, attempts=40, blob=dump_arrays(
            _arrays(i), {"num_examples": str(i + 1), "train_loss": "0.5"})) for i, d in enumerate(keys)}

        # Assert: 200, or 409 only after an unanswered attempt; the model counts each update once
        assert all(o[-1] == "200" or (o[-1] == "409" and "unanswered" in o) for o in outcomes.values()), outcomes
        assert sum("unanswered" in o for o in outcomes.values()) >= 1, outcomes
        _wait_aggregated(url, tmp_path)
        _check_round(url, pg_url, rid, {i: i + 1 for i in range(n)}, list(keys))
    finally:
        served.close()
