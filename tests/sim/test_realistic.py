"""The simulation-only hook: device profiles applied to the real edge-node loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qflare.environment import environment
from qflare.sim.profiles import DeviceProfile, SimulatedDevice, generate_profiles
from qflare.sim.realistic import PROFILES_ENV, SimulatedDropout, attach_simulation, simulated_device_for


class FakeNode:
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.sent: list[int] = []

    def sleep(self, s: float) -> None:
        self.clock[0] += s

    def train_round(self, task: dict[str, Any]) -> bytes:
        self.clock[0] += 1.0  # one second of real training
        return b"update"

    def _send_update(self, round_id: int, update: bytes) -> dict[str, Any] | None:
        self.sent.append(round_id)
        return {"ok": True}


def _node(profile: DeviceProfile) -> tuple[FakeNode, SimulatedDevice, list[float]]:
    clock = [0.0]
    node = FakeNode(clock)
    device = SimulatedDevice(profile, seed=0)
    attach_simulation(node, device, clock=lambda: clock[0], wall=lambda: clock[0])
    return node, device, clock


def test_slow_device_sleeps_its_slowdown_and_network_delay() -> None:
    node, device, clock = _node(DeviceProfile("d", slowdown=10, network_delay_seconds=0.5))
    node.train_round({"round_id": 1, "deadline_at": 100})
    assert clock[0] == pytest.approx(10.0)
    node._send_update(1, b"update")
    assert clock[0] == pytest.approx(10.5) and node.sent == [1]
    assert device.report()["completed"] == 1


def test_offline_device_waits_for_its_window() -> None:
    node, device, clock = _node(DeviceProfile("d", duty_cycle=0.5, period_seconds=10))
    clock[0] = next(t for t in range(20) if device.seconds_until_online(t) > 0)
    node.train_round({"round_id": 1, "deadline_at": 100})
    assert device.offline_seconds > 0


def test_dropped_device_sends_nothing_and_raises_a_named_conflict() -> None:
    node, device, _ = _node(DeviceProfile("d", dropout=0.99))
    reasons = set()
    for r in range(20):
        node.train_round({"round_id": r, "deadline_at": 0})
        with pytest.raises(SimulatedDropout) as err:
            node._send_update(r, b"update")
        reasons.add(err.value.reason)
    assert node.sent == [] and reasons == {"simulated_dropout_training", "simulated_dropout_upload"}


def test_profiles_reach_the_device_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps([p.as_dict() for p in generate_profiles(["edge_01", "edge_02"], slow_fraction=0.5)]))
    monkeypatch.setenv(PROFILES_ENV, str(f))
    slow = [simulated_device_for(d) for d in ("edge_01", "edge_02")]
    assert sorted(s.profile.slowdown for s in slow if s is not None) == [1.0, 10.0]
    assert simulated_device_for("edge_03") is None
    monkeypatch.delenv(PROFILES_ENV)
    environment.cache_clear()  # qflare.environment reads the environment once
    assert simulated_device_for("edge_01") is None


@pytest.mark.long
def test_simulate_with_profiles_reports_each_device(tmp_path: Path) -> None:
    from qflare.sim.realistic import run_realistic_simulation
    from qflare.sim.runner import SimulationConfig

    sim = SimulationConfig(task="digits", clients=4, rounds=2, partition="iid", runs_dir=tmp_path / "runs",
                           deadline_seconds=30, enclave="none")
    profiles = generate_profiles([f"edge_{i + 1:02d}" for i in range(4)], slow_fraction=0.25, slowdown=3,
                                 dropout=0.3, seed=1)
    summary = run_realistic_simulation(sim, profiles)
    assert summary["rounds_completed"] == 2
    assert [d["device_id"] for d in summary["devices"]] == ["edge_01", "edge_02", "edge_03", "edge_04"]
    assert all("tasks" in d and "slowdown" in d for d in summary["devices"])


class QueuedSlot:
    """A fleet's training slot that the device waits ``wait`` seconds for (others of its process train first)."""

    def __init__(self, clock: list[float], wait: float) -> None:
        self.clock, self.wait = clock, wait

    def __enter__(self) -> None:
        self.clock[0] += self.wait

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_hosted_slow_device_multiplies_its_training_not_its_wait_for_the_slot(tmp_path: Path) -> None:
    # Prepare: a 10x slow device in a fleet; it waits 5 s for the process's training slot, then trains 1 s
    from qflare.sim.fleet import prepare_node

    clock = [0.0]
    node = FakeNode(clock)
    node.local_dp = None  # type: ignore[attr-defined]
    device = SimulatedDevice(DeviceProfile("d", slowdown=10), seed=0)

    # Execute: the device as qflare.sim.fleet hosts it
    prepare_node(node, QueuedSlot(clock, wait=5.0), dp_report=tmp_path / "d.dp.json", simulated=device,  # type: ignore[arg-type]
                 clock=lambda: clock[0], wall=lambda: clock[0])
    node.train_round({"round_id": 1, "deadline_at": 100})

    # Assert: 5 s waiting + 1 s training + 9 s of simulated slowness (9 x its training, not 9 x the 6 s)
    assert device.report()["simulated_delay_seconds"] == pytest.approx(9.0)
    assert clock[0] == pytest.approx(15.0)
