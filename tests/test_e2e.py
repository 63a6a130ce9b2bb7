"""End to end over real HTTP: separate server and edge-node processes on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qflare.config import DataConfig
from qflare.crypto.keyfile import read_public_key
from qflare.edge.client import DeviceClient
from qflare.edge.node import EdgeNode
from qflare.sim.runner import SimulationConfig, build_global_config, free_port, start_server

pytestmark = pytest.mark.slow


def test_simulate_cli_three_edges_two_rounds(tmp_path: Path) -> None:
    # Execute: the real command, as a user types it.
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "2", "--task", "digits",
         "--partition", "iid", "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    # Assert: the summary and every artefact.
    assert summary["task"] == "digits" and summary["clients"] == 3 and summary["rounds"] == 2
    assert summary["rounds_completed"] == 2 and summary["accepted_updates"] == 6
    assert summary["rejected_updates"] == 0
    assert 0.5 < summary["final_accuracy"] <= 1.0  # two rounds of 5 local epochs already learn
    assert summary["wall_seconds"] > 0
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["round_id"]) for r in rows] == [1, 2] and all(r["num_updates"] == "3" for r in rows)
    assert (run_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "qflare.db").exists()


def _client(fed, device_id: str, key) -> DeviceClient:  # type: ignore[no-untyped-def]
    server_pub = read_public_key(fed.server_key_file())
    return DeviceClient(fed.url, device_id, key, server_pub, timeout=30)


def test_server_killed_mid_round_resumes_with_no_accepted_update_lost(tmp_path: Path) -> None:
    # Prepare: a server on a file database, three registered devices, round 1 open.
    sim = SimulationConfig(task="digits", clients=3, rounds=1, deadline_seconds=600)
    config = build_global_config(sim, tmp_path, free_port())
    nodes: dict[str, EdgeNode] = {}
    with start_server(config, tmp_path) as fed:
        keys = {d: fed.enroll(d) for d in ("edge_01", "edge_02", "edge_03")}
        clients = {d: _client(fed, d, k) for d, k in keys.items()}
        for i, (d, c) in enumerate(clients.items()):
            data = DataConfig(task="digits", num_partitions=3, partition_index=i)
            nodes[d] = EdgeNode(fed.device_config(d, data), c)
            c.heartbeat()
        task = _wait_for_task(clients["edge_01"])
        # Two devices train and upload; the server then dies without warning.
        for d in ("edge_01", "edge_02"):
            clients[d].upload_update(task["round_id"], nodes[d].train_round(clients[d].task()))
        fed.server.send_signal(signal.SIGKILL)
        fed.server.wait(timeout=30)
    for c in clients.values():
        c.close()

    # Execute: restart on the same database; the third device uploads.
    with start_server(config, tmp_path) as fed:
        with httpx.Client(base_url=fed.url, headers={"Authorization": f"Bearer {fed.admin_token}"}) as admin:
            rnd = admin.get("/v1/admin/rounds").json()[0]
            assert rnd["status"] == "open" and rnd["round_id"] == task["round_id"]
        # Enrollments and the server key survive the restart (database and key directory).
        with _client(fed, "edge_03", keys["edge_03"]) as c3:
            nodes["edge_03"].client = c3
            t3 = c3.task()
            assert t3["status"] == "train"
            c3.upload_update(t3["round_id"], nodes["edge_03"].train_round(t3))
        status = fed.status()

    # Assert: the round aggregated all three updates, two of them accepted before the crash.
    assert status["rounds_completed"] == 1 and status["accepted_updates"] == 3
    assert status["latest_metrics"]["num_updates"] == 3


def _wait_for_task(client: DeviceClient) -> dict:  # type: ignore[type-arg]
    import time

    for _ in range(100):
        t = client.task()
        if t["status"] == "train":
            return t
        time.sleep(0.2)
    raise AssertionError("no task")


def test_simulate_with_every_attacker_rejects_every_attack(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "2", "--task", "digits",
         "--partition", "iid", "--attackers", "impersonate,replay,tamper,revoked", "--runs-dir",
         str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    attacks = summary["attacks"]
    assert set(attacks) == {"impersonate", "replay", "tamper", "revoked"}
    for name, st in attacks.items():
        assert st["attempts"] > 0, name
        assert st["rejected"] == st["attempts"] and st["accepted"] == 0, (name, st)
    assert set(attacks["impersonate"]["reasons"]) == {"unauthenticated"}
    assert set(attacks["replay"]["reasons"]) == {"replay"}
    assert set(attacks["revoked"]["reasons"]) == {"device_revoked"}
    assert "replay" not in attacks["tamper"]["reasons"]
    # The honest federation is unaffected: every honest update accepted, the model learns.
    assert summary["rounds_completed"] == 2 and summary["accepted_updates"] == 6
    assert summary["final_accuracy"] > 0.5


def test_simulate_with_the_hybrid_key_source(tmp_path: Path) -> None:
    """Every request keyed by ML-KEM + X25519 + a BB84 key delivered through the ETSI 014 KME pair."""
    import sqlite3

    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "2", "--task", "digits",
         "--partition", "iid", "--key-source", "hybrid", "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["key_source"] == "hybrid" and summary["rounds_completed"] == 2
    assert summary["accepted_updates"] == 6 and summary["final_accuracy"] > 0.5
    db = sqlite3.connect(Path(summary["run_dir"]) / "qflare.db")
    details = [d for (d,) in db.execute("select detail from events where kind = 'update_accepted'")]
    assert len(details) == 6 and all("key_source=hybrid key_ids=" in d for d in details)


@pytest.mark.long
def test_simulate_traffic_beats_the_naive_forecaster(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "4", "--rounds", "4", "--task", "traffic",
         "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["partition"] == "sensor" and summary["rounds_completed"] == 4
    # Held-out last days: the federated GRU against the last-value forecaster on the same windows.
    assert summary["final_mae"] < 0.8 * summary["baseline_mae"]
    assert (Path(summary["run_dir"]) / "mae.png").exists()
