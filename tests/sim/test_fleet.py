"""Virtual devices: many EdgeNodes per process, each with its own identity, keys, data and envelopes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from qflare.sim.fleet import log_per_device
from qflare.sim.runner import (
    SimulationConfig,
    active_window,
    build_global_config,
    default_deadline,
    default_long_poll,
    edge_processes,
    run_simulation,
)


@pytest.mark.parametrize(("clients", "per_process", "expected"),
                         [(3, 1, 3), (3, None, 2), (100, None, 2), (200, None, 4), (1000, None, 20), (10, 5, 2),
                          (1, None, 1)])
def test_edge_processes(clients: int, per_process: int | None, expected: int) -> None:
    assert edge_processes(clients, per_process) == expected


def test_each_device_s_log_gets_its_own_threads_lines_only(tmp_path: Path) -> None:
    # Prepare: three devices, one a prefix of another's name, and a helper thread of one of them
    configs = [tmp_path / f"{name}.yaml" for name in ("edge_01", "edge_010", "rogue-revoked")]
    handlers = log_per_device(configs, tmp_path)
    log = logging.getLogger("qflare.test.fleet")
    log.setLevel(logging.INFO)

    def say(thread_name: str, text: str) -> None:
        t = threading.Thread(target=log.info, args=(text,), name=thread_name)
        t.start()
        t.join()

    # Execute
    try:
        say("edge_01", "one")
        say("edge_010", "ten")
        say("edge_01-audit", "one's audit")
        say("rogue-revoked", "rogue")
        say("rogue-revoked-audit", "rogue's audit")
        say("MainThread", "nobody's")
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()

    # Assert
    def lines(name: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in (tmp_path / f"{name}.log").read_text().splitlines()]

    assert lines("edge_01") == ["one", "one's audit"]
    assert lines("edge_010") == ["ten"]
    assert lines("rogue-revoked") == ["rogue", "rogue's audit"]


@pytest.mark.slow
def test_four_virtual_devices_in_one_process_run_the_full_protocol(tmp_path: Path) -> None:
    # Prepare: one edge process hosts all four devices (each its own config, key and shard)
    sim = SimulationConfig(task="digits", clients=4, rounds=2, partition="iid", devices_per_process=4,
                           runs_dir=tmp_path / "runs")

    # Execute
    summary = run_simulation(sim)

    # Assert: both rounds aggregated all four updates; one fleet log, one log per device
    run_dir = Path(summary["run_dir"])
    assert summary["rounds_completed"] == 2 and summary["accepted_updates"] == 8
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert "fleet_01.log" in logs and "fleet_02.log" not in logs
    for d in ("edge_01", "edge_02", "edge_03", "edge_04"):
        assert "update accepted" in (run_dir / "logs" / f"{d}.log").read_text()
    keys = {(run_dir / "devices" / f"edge_0{i}.key").read_bytes() for i in range(1, 5)}
    assert len(keys) == 4  # four identities


@pytest.mark.parametrize(("clients", "window"), [(10, 30.0), (300, 30.0), (1000, 100.0), (5000, 500.0)])
def test_the_simulation_servers_active_window_grows_with_the_devices(tmp_path: Path, clients: int,
                                                                     window: float) -> None:
    # A round opens when every device was seen within the window; one machine serves each device in turn
    config = build_global_config(SimulationConfig(clients=clients), tmp_path, 8000)
    assert active_window(clients) == window == config.rounds.active_window_seconds


@pytest.mark.parametrize(("clients", "deadline", "hold"), [(10, 120.0, 10.0), (200, 120.0, 10.0),
                                                           (300, 180.0, 10.0), (1000, 600.0, 30.0)])
def test_simulate_defaults_for_deadline_and_hold_scale_with_the_devices(clients: int, deadline: float,
                                                                         hold: float) -> None:
    assert default_deadline(clients) == deadline and default_long_poll(clients) == hold


def test_the_revoked_attacker_does_not_let_round_one_open_before_every_honest_edge(tmp_path: Path) -> None:
    # Found in CI: `--attackers revoked` enrolls and revokes one more device, and a revoked device lowers what
    # a round waits for; round 1 opened with 2 of the 3 honest edges (5 of 6 updates over two rounds).
    from tests.server.conftest import _KEYS, ADMIN, enroll, make_harness

    sim = SimulationConfig(clients=3, attackers=("revoked",))
    min_devices = build_global_config(sim, tmp_path, 8000).rounds.min_devices
    assert min_devices == 4
    honest = {"edge_01": _KEYS[0], "edge_02": _KEYS[1]}
    for h in make_harness(tmp_path, keys={**honest, "rogue_revoked": _KEYS[2]}, min_devices=min_devices,
                          min_quorum=2):
        # Prepare: the rogue device revoked, two honest edges polling, the third not yet enrolled
        revoke = h.client.post("/v1/admin/devices/rogue_revoked/revoke", headers={"Authorization": f"Bearer {ADMIN}"})
        assert revoke.status_code == 200
        del h.keys["rogue_revoked"]
        h.poll_all()
        h.state.orchestrator.tick()
        assert h.state.orchestrator.current_round() is None  # waits for the third honest edge

        # Execute: the third enrolls and polls
        enroll(h.client, "edge_03", _KEYS[3])
        h.keys["edge_03"] = _KEYS[3]
        h.poll_all()
        h.state.orchestrator.tick()

        # Assert: round 1 selects all three honest edges
        rnd = h.state.orchestrator.current_round()
        assert rnd is not None and set(rnd.selected) == {"edge_01", "edge_02", "edge_03"}
