"""Issue 12, "Load": the load generator at a small N loses and double counts nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qflare.bench.load import _percentile, peak_rss_mib, rss_mib

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_devices.py"


@pytest.mark.slow
def test_twenty_devices_two_rounds_every_upload_recorded_once(tmp_path: Path) -> None:
    # Prepare / Execute: the benchmark command itself, against a real qflare server process
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "20", "--rounds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["stopped"] == "" and run["errors"] == {}
    assert run["acknowledged"] == run["recorded"] == run["server_accepted_updates"] == 40
    assert run["lost"] == [] and run["unacknowledged"] == [] and run["sha256_mismatch"] == []
    assert run["double_counted"] == 0 and run["rounds_whose_aggregate_differs"] == []
    assert [r["aggregated_updates"] for r in run["per_round_server"]] == [20, 20]
    assert run["rounds_completed"] == 2 and run["rounds_failed"] == 0
    assert run["update_bytes"] > 3_900_000  # a real ~1M-parameter update, not a toy
    assert run["upload_latency_seconds"]["p99"] >= run["upload_latency_seconds"]["p50"] > 0
    assert run["updates_per_s"] > 0 and run["MB_per_s"] > 0 and run["server_peak_rss_MiB"] > 0
    assert json.loads(proc.stdout.strip().splitlines()[-1])["runs"][0]["devices"] == 20


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (_percentile(values, 50), _percentile(values, 99), _percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert _percentile([3.0], 99) == 3.0


def test_memory_figures_of_this_process() -> None:
    assert peak_rss_mib() >= rss_mib() > 0
    assert rss_mib(2**22 + 1) == 0.0  # a process that does not exist
