"""Simulated device behaviour: profile files, generated fleets, duty cycles and drop-outs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.errors import ConfigError
from qflare.sim.profiles import DeviceProfile, SimulatedDevice, generate_profiles, load_profiles

IDS = ["edge_01", "edge_02", "edge_03"]


def test_load_profiles_by_device_id_and_defaults(tmp_path: Path) -> None:
    # Prepare
    f = tmp_path / "p.csv"
    f.write_text("device_id,slowdown,duty_cycle,dropout,network_delay_seconds\n"
                 "edge_02,10,0.5,0.2,0.3\n")

    # Execute
    profiles = load_profiles(f, IDS)

    # Assert: the named device gets its row, the others the default profile
    assert profiles[1] == DeviceProfile("edge_02", 10.0, 0.5, 0.2, 0.3)
    assert profiles[0] == DeviceProfile("edge_01") and profiles[2] == DeviceProfile("edge_03")


def test_load_profiles_by_position_without_device_id(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("slowdown,dropout\n2,0\n3,0.1\n")
    assert [p.slowdown for p in load_profiles(f, IDS)] == [2.0, 3.0, 1.0]


@pytest.mark.parametrize(("body", "needle"), [
    ("device_id,slowdown\nedge_01,fast\n", "line 2, column slowdown: 'fast' is not a number"),
    ("device_id,slowdown\nedge_01,1\nedge_02,-3\n", "line 3: device profile edge_02: slowdown must be > 0"),
    ("device_id,dropout\nedge_01,1.5\n", "line 2: device profile edge_01: dropout must be in [0, 1)"),
    ("device_id,duty_cycle\nedge_01,\n", "line 2, column duty_cycle: empty"),
    ("device_id,slowdown\nedge_09,2\n", "line 2, column device_id: unknown device 'edge_09'"),
    ("device_id,slowdown\nedge_01,2\nedge_01,3\n", "line 3: a second row for device 'edge_01'"),
    ("device_id,speed\nedge_01,2\n", "line 1: unknown column(s) speed"),
    ("slowdown\n1\n1\n1\n1\n", "line 5: more rows than the 3 devices"),
    ("device_id,slowdown\nedge_01,2,7\n", "line 2: more cells than header columns"),
])
def test_bad_profile_row_is_refused_naming_the_row(tmp_path: Path, body: str, needle: str) -> None:
    f = tmp_path / "p.csv"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_profiles(f, IDS)
    assert err.value.reason == "bad_device_profile"
    assert needle in err.value.message and str(f) in err.value.message


def test_generate_profiles_slow_fraction_and_dropout() -> None:
    ids = [f"d{i}" for i in range(50)]
    profiles = generate_profiles(ids, slow_fraction=0.3, slowdown=10, dropout=0.2, seed=0)
    assert sum(p.slowdown == 10 for p in profiles) == 15
    assert all(p.dropout == 0.2 for p in profiles)
    assert profiles == generate_profiles(ids, slow_fraction=0.3, slowdown=10, dropout=0.2, seed=0)
    spread = generate_profiles(ids, speed_sigma=0.5, seed=1)
    assert all(p.slowdown >= 1 for p in spread) and len({p.slowdown for p in spread}) > 10


def test_duty_cycle_online_fraction() -> None:
    dev = SimulatedDevice(DeviceProfile("d", duty_cycle=0.25, period_seconds=100), seed=0)
    online = sum(dev.seconds_until_online(t) == 0 for t in range(1000))
    assert online == 250
    t = next(t for t in range(1000) if dev.seconds_until_online(t) > 0)
    assert dev.seconds_until_online(t + dev.seconds_until_online(t)) == 0


def test_dropout_rate_and_stages_are_deterministic() -> None:
    dev = SimulatedDevice(DeviceProfile("d", dropout=0.4), seed=3)
    outcomes = [dev.next_outcome() for _ in range(5000)]
    assert 0.17 < outcomes.count("drop_training") / 5000 < 0.23
    assert 0.17 < outcomes.count("drop_upload") / 5000 < 0.23
    again = SimulatedDevice(DeviceProfile("d", dropout=0.4), seed=3)
    assert [again.next_outcome() for _ in range(5000)] == outcomes
    assert dev.report()["tasks"] == 5000
