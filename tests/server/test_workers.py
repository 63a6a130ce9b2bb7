"""``qflare server --workers 2`` on PostgreSQL, over real HTTP: every worker accepts, one owner closes.

The kernel hands each new connection to either worker; every request below opens its own connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx
import pytest
from typer.testing import CliRunner

from qflare.config import EnclaveHostConfig, GlobalConfig, RoundsConfig, ServerConfig, TrainConfig, dump_yaml
from qflare.crypto import SigningKey
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import parse_public_key, serialize_public_key
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.server.rounds import initial_model_blob
from qflare.server.storage import Repository
from tests.server.pg import fresh_schema

ADMIN = "operator-token-for-worker-tests-0123456789"
N_DEVICES = 200


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema("qflare_workers") as url:
        yield url


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[str]:
    yield from _serve_workers(tmp_path, pg_url, N_DEVICES)


def _serve_workers(tmp_path: Path, pg_url: str, devices: int, env: dict[str, str] | None = None, *,
                   enclave: bool = False, args: tuple[str, ...] = ()) -> Iterator[str]:
    """``qflare server --workers 2`` (with the simulated enclave when ``enclave``); yields its URL."""
    port = _free_port()
    _write_workers_config(tmp_path, pg_url, devices, enclave=enclave, port=port)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = _start_workers(tmp_path, port, log, env=env, args=args)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_server(proc)
        log.close()


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the workers' graceful stop), then SIGKILL if it still runs 20 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _write_workers_config(tmp_path: Path, pg_url: str, devices: int, *, enclave: bool, port: int) -> Path:
    """``tmp_path/global_config.yaml``: one round of ``devices`` (also its quorum); keys, enclave in ``tmp_path``."""
    cfg = GlobalConfig(
        task="digits",
        enclave=EnclaveHostConfig(backend="simulated", work_dir=str(tmp_path / "enclave")) if enclave
        else EnclaveHostConfig(backend="none"),
        server=ServerConfig(db_url=pg_url, key_dir=str(tmp_path / "keys"), port=port),
        rounds=RoundsConfig(total=1, min_devices=devices, min_quorum=devices, deadline_seconds=300.0),
        training=TrainConfig(epochs=1, batch_size=32, lr=0.05),
    )
    cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"enabled": False})})
    dump_yaml(cfg, tmp_path / "global_config.yaml")
    return tmp_path / "global_config.yaml"


def _start_workers(tmp_path: Path, port: int, log: IO[bytes], *, env: dict[str, str] | None = None,
                   args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """``qflare server --workers 2`` on ``tmp_path/global_config.yaml``, once its ``/healthz`` answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "qflare", "server", "-c", str(tmp_path / "global_config.yaml"), "--workers", "2",
         "--token-file", str(tmp_path / "token"), *args],
        env={**os.environ, "QFLARE_ADMIN_TOKEN": ADMIN, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _post(url: str, key: SigningKey, server_pub, device_id: str, path: str, payload: bytes = b"",  # type: ignore[no-untyped-def]
          round_id: int | None = None) -> httpx.Response:
    envelope, _ = seal_request(key, server_pub, device_id=device_id, method="POST", path=path, round_id=round_id,
                               payload=payload, now=time.time())
    return httpx.post(url + path, content=envelope, timeout=60)  # a new connection: any worker


def _upload_as_a_device(url: str, key: SigningKey, server_pub, device_id: str, round_id: int,  # type: ignore[no-untyped-def]
                        blob: bytes, *, attempts: int) -> list[str]:
    """What a device does (docs/protocol.md 13.3): re-send a fresh envelope when unanswered or answered 5xx;
    a duplicate_update after an unanswered attempt means the first one was accepted. Returns what each
    attempt got (``unanswered`` or the status code), the last being the answer."""
    seen: list[str] = []
    for _ in range(attempts):
        try:
            r = _post(url, key, server_pub, device_id, f"/v1/device/rounds/{round_id}/update", blob, round_id=round_id)
        except httpx.TransportError:
            seen.append("unanswered")
            time.sleep(0.5)
            continue
        seen.append(str(r.status_code))
        if r.status_code >= 500:
            time.sleep(0.5)
            continue
        return seen
    raise AssertionError(f"{device_id}: no answer after {seen}")


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_accept_200_uploads_in_one_round_none_lost_none_twice(workers: str, pg_url: str) -> None:
    # Prepare: 200 enrolled devices, each heartbeat over its own connection
    url = workers
    auth = {"Authorization": f"Bearer {ADMIN}"}
    keys = {f"dev_{i:03d}": SigningKey.generate() for i in range(N_DEVICES)}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as admin:
        for d, k in keys.items():
            r = admin.post("/v1/admin/devices", json={"device_id": d, "public_key":
                                                       serialize_public_key(k.public_key()).decode()})
            assert r.status_code == 201, r.text
    server_pub = parse_public_key(httpx.get(f"{url}/v1/server/keys").json()["kem_public_key"].encode())
    with ThreadPoolExecutor(8) as pool:
        beats = list(pool.map(lambda d: _post(url, keys[d], server_pub, d, "/v1/device/heartbeat").status_code,
                              keys))
    assert beats == [200] * N_DEVICES
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{url}/v1/admin/status", headers=auth).json()).get("current_round") is None:
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    rid = status["current_round"]["round_id"]
    spec = ModelSpec.from_model(get_task("digits").build_model())
    base, _ = load_arrays(initial_model_blob("digits", 0), spec)

    def upload(i_d: tuple[int, str]) -> int:
        i, d = i_d
        blob = dump_arrays(base, {"num_examples": str(i + 1), "train_loss": "0.5"})
        return _post(url, keys[d], server_pub, d, f"/v1/device/rounds/{rid}/update", blob, round_id=rid).status_code

    # Execute: 200 uploads, 8 at a time, each on a new connection
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(upload, enumerate(keys)))

    # Assert: all accepted once, the owner aggregated all 200 (sum of num_examples: 1 + ... + 200)
    assert codes == [200] * N_DEVICES
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/v1/admin/status", headers=auth).json()["rounds_completed"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    repo = Repository(pg_url)
    try:
        rnd = repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated" and rnd.metrics is not None
        assert rnd.metrics["num_updates"] == N_DEVICES
        assert rnd.metrics["total_examples"] == N_DEVICES * (N_DEVICES + 1) // 2
        assert len(repo.update_device_ids(rid)) == N_DEVICES
    finally:
        repo.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_replay_on_a_new_connection_is_refused_by_whichever_worker_gets_it(workers: str) -> None:
    url = workers
    key = SigningKey.generate()
    r = httpx.post(f"{url}/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"device_id": "dev_r", "public_key": serialize_public_key(key.public_key()).decode()})
    assert r.status_code == 201
    server_pub = parse_public_key(httpx.get(f"{url}/v1/server/keys").json()["kem_public_key"].encode())
    envelope, _ = seal_request(key, server_pub, device_id="dev_r", method="POST", path="/v1/device/heartbeat",
                               round_id=None, payload=b"", now=time.time())
    codes = [httpx.post(f"{url}/v1/device/heartbeat", content=envelope, timeout=30).status_code for _ in range(8)]
    assert codes[0] == 200 and codes[1:] == [409] * 7


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    from qflare.cli.app import app

    result = CliRunner().invoke(app, ["server", "--db", f"sqlite:///{tmp_path / 'q.db'}", "--workers", "2",
                                      "--token-file", str(tmp_path / "t")])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "SQLite is single-process" in str(result.exception)


def test_workers_with_the_enclave_share_it_on_postgresql_and_sqlite_stays_refused() -> None:
    from qflare.errors import ConfigError
    from qflare.server.workers import check_workers

    check_workers(GlobalConfig(enclave=EnclaveHostConfig(backend="simulated")), 4, "postgresql")  # no refusal
    with pytest.raises(ConfigError, match="SQLite is single-process") as info:
        check_workers(GlobalConfig(enclave=EnclaveHostConfig(backend="simulated")), 2, "sqlite")
    assert "\n" not in info.value.message


@pytest.mark.postgres
@pytest.mark.long
def test_a_worker_killed_mid_upload_loses_nothing_and_counts_nothing_twice(tmp_path: Path, pg_url: str) -> None:
    from qflare.ledger.entries import UpdateAccepted, decode_event
    from qflare.server.faults import ENV
    from qflare.server.storage.ledger_store import SqlLogStore

    # Prepare: two workers, each SIGKILLed right after the first update it commits (before it answers);
    # uvicorn starts a new worker in its place
    n = 6
    served = _serve_workers(tmp_path, pg_url, n, env={ENV: "after_commit@1"})
    url = next(served)
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        keys = {f"dev_{i}": SigningKey.generate() for i in range(n)}
        for d, k in keys.items():
            r = httpx.post(f"{url}/v1/admin/devices", headers=auth, timeout=30,
                           json={"device_id": d, "public_key": serialize_public_key(k.public_key()).decode()})
            assert r.status_code == 201, r.text
        server_pub = parse_public_key(httpx.get(f"{url}/v1/server/keys").json()["kem_public_key"].encode())
        for d in keys:
            assert _post(url, keys[d], server_pub, d, "/v1/device/heartbeat").status_code == 200
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{url}/v1/admin/status", headers=auth).json()).get("current_round") is None:
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        rid = status["current_round"]["round_id"]
        base, _ = load_arrays(initial_model_blob("digits", 0), ModelSpec.from_model(get_task("digits").build_model()))

        # Execute
        outcomes = {d: _upload_as_a_device(url, keys[d], server_pub, d, rid, attempts=30, blob=dump_arrays(
            base, {"num_examples": str(i + 1), "train_loss": "0.5"})) for i, d in enumerate(keys)}

        # Assert: each device either got 200, or 409 (duplicate) after an unanswered attempt; workers died
        assert all(o[-1] == "200" or (o[-1] == "409" and "unanswered" in o) for o in outcomes.values()), outcomes
        assert sum("unanswered" in o for o in outcomes.values()) >= 1, outcomes
        deadline = time.monotonic() + 90
        while httpx.get(f"{url}/v1/admin/status", headers=auth).json()["rounds_completed"] < 1:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        repo = Repository(pg_url)
        store = SqlLogStore(repo.engine)
        try:
            rnd = repo.get_round(rid)
            assert rnd is not None and rnd.status == "aggregated" and rnd.metrics is not None
            assert rnd.metrics["num_updates"] == n and rnd.metrics["total_examples"] == n * (n + 1) // 2
            assert sorted(repo.update_device_ids(rid)) == sorted(keys)
            logged = [e.device_id for e in map(decode_event, store.read_entries(0, store.size()))
                      if isinstance(e, UpdateAccepted)]
            assert sorted(logged) == sorted(keys)  # each accepted update logged exactly once
        finally:
            repo.close()
    finally:
        served.close()
