"""``qflare simulate --mode async`` over real HTTP: server, simulated enclave, ledger, edge processes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from qflare.sim.fleet import FairGate
from qflare.sim.profiles import generate_profiles
from qflare.sim.realistic import run_realistic_simulation
from qflare.sim.runner import SimulationConfig


def test_fair_gate_admits_in_arrival_order() -> None:
    gate, order = FairGate(1), []

    def worker(i: int) -> None:
        with gate:
            order.append(i)
            time.sleep(0.01)

    with gate:  # hold the slot while the others queue up, in order
        threads = []
        for i in range(5):
            t = threading.Thread(target=worker, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(0.02)
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.long
def test_async_run_over_http_learns_with_stale_updates(tmp_path: Path) -> None:
    # Prepare: 6 devices, half of them 4x slower; a model every 4 updates (so every buffer waits for a
    # slow device, and the other slow devices' updates arrive stale), 10 models
    sim = SimulationConfig(task="digits", clients=6, rounds=10, mode="async", buffer=4, max_staleness=4,
                           target=0.8, runs_dir=tmp_path / "runs")
    profiles = generate_profiles([f"edge_{i + 1:02d}" for i in range(6)], slow_fraction=0.5, slowdown=4.0, seed=0)

    # Execute
    summary = run_realistic_simulation(sim, profiles)

    # Assert: 10 versions of exactly 4 updates, learned, through the enclave
    assert summary["mode"] == "async" and summary["rounds_completed"] == 10 and summary["rounds_failed"] == 0
    assert summary["accepted_updates"] == 40
    assert summary["final_accuracy"] >= 0.85 and summary["time_to_target_seconds"] is not None
    db = sqlite3.connect(Path(summary["run_dir"]) / "qflare.db")
    reasons = {r for (r,) in db.execute("select close_reason from rounds")}
    assert reasons == {"buffer_full"}
    details = [d for (d,) in db.execute("select detail from events where kind = 'update_accepted'")]
    assert all("base_version=" in d for d in details)
    assert any("staleness=0" not in d for d in details), "no stale update was rebased and accepted"
    signed = [s for (s,) in db.execute("select signature from model_versions where version > 0")]
    assert len(signed) == 10 and all(signed)  # every published version signed by the enclave
    metrics = [json.loads(m) for (m,) in db.execute("select metrics from rounds where metrics is not null")]
    assert any(m.get("staleness_max", 0) >= 1 for m in metrics)
