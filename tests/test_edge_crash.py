"""Issue 12, crash matrix, the edge's column: an edge process SIGKILLed while it trains and after its
upload was accepted, then restarted with the same identity and data. The round completes with every
device's update counted exactly once (the restarted device re-trains or is told it already reported),
the next round completes with all three, and the audit log verifies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from qflare.config import DataConfig
from qflare.sim.runner import Federation, SimulationConfig, build_global_config, free_port, start_server
from tests.test_crash_matrix import _assert_ledger

pytestmark = pytest.mark.slow

DEVICES = ("edge_01", "edge_02", "edge_03")
VICTIM = "edge_02"


def _log(fed: Federation, device_id: str) -> str:
    path = fed.run_dir / "logs" / f"{device_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(what: str, check: object, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _rounds(fed: Federation) -> list[dict]:  # type: ignore[type-arg]
    with fed.admin() as c:
        return list(c.get("/v1/admin/rounds").json())


def _round_devices(fed: Federation, round_id: int) -> list[str]:
    with fed.admin() as c:
        doc = c.get(f"/v1/admin/rounds/{round_id}").json()
    return sorted(u["device_id"] for u in doc["updates"])


@pytest.mark.parametrize("kill_at", [pytest.param("while_training", marks=pytest.mark.long), "after_upload_accepted"])
def test_an_edge_killed_and_restarted_is_counted_once_and_the_rounds_complete(tmp_path: Path, kill_at: str) -> None:
    # Prepare: three edge processes, a quorum of all three, two rounds, a deadline far away.
    sim = SimulationConfig(task="digits", clients=3, rounds=2, deadline_seconds=300.0, enclave="none",
                           aggregator="fedavg", min_quorum=3)
    config = build_global_config(sim, tmp_path, free_port())
    with start_server(config, tmp_path) as fed:
        configs = {}
        for i, device_id in enumerate(DEVICES):
            fed.enroll(device_id)
            data = DataConfig(task="digits", partition="iid", num_partitions=3, partition_index=i, seed=0)
            configs[device_id] = fed.device_config(device_id, data, long_poll_seconds=5)
            if device_id != VICTIM:
                fed.start_edge(configs[device_id])
        fed.start_edge(configs[VICTIM])
        marker = {"while_training": "round 1 training on", "after_upload_accepted": "round 1 update accepted"}[kill_at]
        _wait_for(f"'{marker}' in the victim's log", lambda: marker in _log(fed, VICTIM))

        # Execute: SIGKILL the victim, then start it again with the same identity, data and config.
        victim = fed.edges.pop(VICTIM)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        fed.start_edge(configs[VICTIM])
        _wait_for("both rounds aggregated", lambda: [r["status"] for r in _rounds(fed)].count("aggregated") == 2)
        rounds = sorted(_rounds(fed), key=lambda r: r["round_id"])
        per_round = {r["round_id"]: _round_devices(fed, r["round_id"]) for r in rounds}
        victim_log = _log(fed, VICTIM)

    # Assert: each round counted each device exactly once, and the log verifies.
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated"], rounds
    assert all(devices == list(DEVICES) for devices in per_round.values()), per_round
    assert [r["metrics"]["num_updates"] for r in rounds] == [3, 3], rounds
    if kill_at == "after_upload_accepted":
        # the restarted device did not count twice: it was told it had already reported (or waited)
        assert "round 2 update accepted" in victim_log, victim_log[-2000:]
    _assert_ledger(tmp_path, config.server.key_dir, [r["round_id"] for r in rounds], DEVICES)
