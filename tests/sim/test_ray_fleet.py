"""``qflare simulate --backend ray``: fleets of virtual devices in Ray actors, a local or an existing cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.errors import ConfigError
from qflare.sim.net import free_port
from qflare.sim.ray_fleet import RayCluster, check_ray_address


def _qflare(*args: str, cwd: Path, timeout: float = 300, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}import sys; from qflare.cli.app import main; sys.argv = ['qflare', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("clients", "per_actor", "cpus", "expected"),
                         [(1000, None, 2, 2), (1, None, 2, 1), (10, 3, 2, 4), (5, None, 8, 5)])
def test_actors_for(clients: int, per_actor: int | None, cpus: int, expected: int) -> None:
    assert RayCluster(ray=None, address=None, cpus=cpus, started_here=True).actors_for(clients, per_actor) == expected


def test_backend_ray_without_ray_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    # Prepare: an interpreter where `import ray` fails, as without the extra
    # Execute
    proc = _qflare("simulate", "--backend", "ray", "--clients", "2", "--rounds", "1", "--runs-dir", str(tmp_path),
                   cwd=tmp_path, prelude="import sys; sys.modules['ray'] = None; ")

    # Assert: exit 3 (ConfigError), one line naming the extra, nothing started
    assert proc.returncode == 3, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "ray_not_installed" in line and "qflare[ray]" in line
    assert list(tmp_path.iterdir()) == []


def test_ray_address_without_backend_ray_is_refused(tmp_path: Path) -> None:
    proc = _qflare("simulate", "--ray-address", "127.0.0.1:6379", "--clients", "2", cwd=tmp_path)
    assert proc.returncode == 3
    assert "--ray-address: given without --backend ray" in _one_error_line(proc.stderr)


def test_malformed_ray_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT") as err:
        check_ray_address("no-port-here")
    assert err.value.reason == "bad_option"


def test_unreachable_ray_address_is_one_line_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    # Prepare: a loopback port nothing listens on
    address = f"127.0.0.1:{free_port()}"

    # Execute
    tic = time.monotonic()
    proc = _qflare("simulate", "--backend", "ray", "--ray-address", address, "--clients", "2", "--rounds", "1",
                   "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)

    # Assert: exit 3, one line with the address and the reason, no traceback, no run started
    assert proc.returncode == 3, proc.stderr
    line = _one_error_line(proc.stderr)
    assert address in line and "ray_unreachable" in line and "cannot reach" in line
    assert not (tmp_path / "runs").exists()
    assert time.monotonic() - tic < 60  # refused at once, not after Ray's minute of retries


@pytest.mark.slow
def test_three_devices_in_ray_actors_run_the_full_protocol(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    # Prepare: a local Ray cluster (started by qflare simulate), one actor per CPU
    # Execute
    proc = _qflare("simulate", "--backend", "ray", "--clients", "3", "--rounds", "1", "--partition", "iid",
                   "--runs-dir", str(tmp_path / "runs"), "--json", cwd=tmp_path, timeout=400)

    # Assert: the round aggregated all three updates
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rounds_completed"] == 1 and summary["accepted_updates"] == 3
    run_dir = Path(summary["run_dir"])
    logs = run_dir / "logs"
    # every device ran the protocol in a Ray actor (a fleet log per actor, written by the actor's process) ...
    fleets = sorted(p.name for p in logs.glob("fleet_*.log"))
    assert fleets == [f"fleet_{k + 1:02d}.log" for k in range(min(3, os.cpu_count() or 1))]
    actor_pids = set()
    for f in fleets:
        text = (logs / f).read_text()
        assert "in Ray actor pid" in text
        actor_pids.add(text.split("in Ray actor pid ", 1)[1].split()[0])
    assert len(actor_pids) == len(fleets)
    for d in ("edge_01", "edge_02", "edge_03"):
        assert "round 1 update accepted" in (logs / f"{d}.log").read_text()
    # ... with its own identity
    keys = {(run_dir / "devices" / f"edge_0{i}.key").read_bytes() for i in (1, 2, 3)}
    assert len(keys) == 3
    assert "backend=ray" in proc.stderr  # the banner says which backend ran


@contextlib.contextmanager
def _ray_head(port: int) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1, in its own session; its process group is killed after."""
    temp = tempfile.mkdtemp(prefix="qr")  # short: Ray's unix socket paths must fit 107 bytes
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp,
                             "--object-store-memory", str(80 * 2**20), "--node-ip-address", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # only our head's session: never `ray stop` (all of Ray here)
        head.wait(timeout=30)


@pytest.mark.slow
def test_an_existing_cluster_by_ray_address(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from qflare.sim.runner import SimulationConfig, run_simulation

    # Prepare: a one-CPU cluster started apart, as an operator's would be
    port = free_port()
    with _ray_head(port) as address:
        deadline = time.monotonic() + 90
        while True:  # the head answers once its GCS is up
            try:
                check_ray_address(address, timeout=1)
                break
            except ConfigError:
                assert time.monotonic() < deadline, "ray start --head did not come up"
                time.sleep(0.5)
        sim = SimulationConfig(task="digits", clients=2, rounds=1, partition="iid", backend="ray",
                               ray_address=address, runs_dir=tmp_path / "runs")

        # Execute
        summary = run_simulation(sim)

    # Assert: both devices in the one actor the one-CPU cluster holds
    assert summary["rounds_completed"] == 1 and summary["accepted_updates"] == 2
    logs = Path(summary["run_dir"]) / "logs"
    assert sorted(p.name for p in logs.glob("fleet_*.log")) == ["fleet_01.log"]
    assert "2 virtual devices in Ray actor pid" in (logs / "fleet_01.log").read_text()
