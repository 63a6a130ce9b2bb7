"""``qflare server --workers 2`` gives each worker what one server process has: the dashboard's operator
accounts, ``--log-format json`` (each line naming its worker's pid), quiet Alembic, and the transport limits.

Each request opens its own connection, so the kernel hands it to either worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qflare.config import EnclaveHostConfig, GlobalConfig, RoundsConfig, ServerConfig, TrainConfig, dump_yaml
from qflare.server.operators import OperatorAccounts
from qflare.sim.net import free_port
from tests.server.pg import fresh_schema
from tests.server.test_workers import _stop_server

ADMIN = "operator-token-for-worker-settings-0123456789"
PASSWORD = "a worker's operator passphrase"


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with fresh_schema("qflare_worker_settings") as pg_url:
        port = free_port()
        cfg = GlobalConfig(
            task="digits", enclave=EnclaveHostConfig(backend="none"),
            server=ServerConfig(db_url=pg_url, key_dir=str(tmp_path / "keys"), port=port, max_header_bytes=4096),
            rounds=RoundsConfig(total=1, min_devices=50, min_quorum=50, deadline_seconds=300.0),
            training=TrainConfig(epochs=1, batch_size=32, lr=0.05),
        )
        cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"enabled": False})})
        dump_yaml(cfg, tmp_path / "global_config.yaml")
        OperatorAccounts(tmp_path / "ops.json").add("alice", PASSWORD)
        log_path = tmp_path / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qflare", "server", "-c", str(tmp_path / "global_config.yaml"), "--workers",
                 "2", "--token-file", str(tmp_path / "token"), "--operators-file", "ops.json", "--log-format", "json"],
                cwd=tmp_path, env={**os.environ, "QFLARE_ADMIN_TOKEN": ADMIN}, stdout=log, stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 120
                while True:
                    assert proc.poll() is None, log_path.read_text()
                    try:
                        if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, "server did not come up"
                    time.sleep(0.3)
                yield url, log_path
            finally:
                _stop_server(proc)


@pytest.mark.postgres
@pytest.mark.slow
def test_every_worker_has_the_accounts_the_log_format_and_the_limits(two_workers: tuple[str, Path]) -> None:
    url, log_path = two_workers
    # Execute: sign in 12 times, each on a new connection (either worker); then one oversized header.
    answers = [httpx.post(f"{url}/dashboard/login", data={"name": "alice", "password": PASSWORD}, timeout=30)
               for _ in range(12)]
    big = httpx.get(f"{url}/healthz", headers={"x-padding": "a" * 8192}, timeout=30)
    for _ in range(6):  # a request id in every worker's log
        httpx.get(f"{url}/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    # Assert: every sign-in found alice (no worker without the accounts: that was a 401)
    assert [a.status_code for a in answers] == [303] * 12
    assert all(a.headers["location"] == "/dashboard" and "qflare_session=" in a.headers["set-cookie"]
               for a in answers)
    assert big.status_code == 431 and big.json()["error"]["reason"] == "header_too_large"
    time.sleep(0.5)
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines if ln.startswith("{")]
    console = [ln for ln in lines if not ln.startswith("{")]
    # The parent's console lines (banner) are text; everything a worker logs is JSON, and names its pid.
    assert all(not ln.lstrip().startswith(("INFO", "WARNING", "ERROR")) for ln in console), console
    assert len({r["pid"] for r in records if "pid" in r}) == 2, records
    assert not [ln for ln in lines if "alembic" in ln.lower() or "Context impl" in ln], lines


@pytest.mark.postgres
def test_the_start_banner_shows_the_database_without_its_password(tmp_path: Path) -> None:
    # PostgreSQL here trusts local connections, so a URL with a password connects: the banner must hide it.
    with fresh_schema("qflare_banner") as pg_url:
        url = pg_url.replace("postgres@", "postgres:s3cret-pw@")
        cfg = GlobalConfig(task="digits", enclave=EnclaveHostConfig(backend="none"),
                           server=ServerConfig(db_url=url, key_dir=str(tmp_path / "keys"), port=free_port()))
        dump_yaml(cfg, tmp_path / "global_config.yaml")
        proc = subprocess.Popen(
            [sys.executable, "-m", "qflare", "server", "-c", str(tmp_path / "global_config.yaml"), "--token-file",
             str(tmp_path / "token"), "--no-run-artefacts"],
            cwd=tmp_path, env={**os.environ, "QFLARE_ADMIN_TOKEN": ADMIN, "COLUMNS": "400"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("QFLARE server:"):
                    break
            banner = seen[-1]
            assert banner.startswith("QFLARE server:") and "127.0.0.1:5432/test" in banner, seen
            assert "s3cret-pw" not in "".join(seen) and "postgres:***@" in banner
        finally:
            proc.terminate()
            proc.wait(timeout=30)
