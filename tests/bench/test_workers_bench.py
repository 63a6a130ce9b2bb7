"""Issue 13, "Several workers, one truth": the benchmarks against ``qflare server --workers K`` on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.pg import PG_URL, pg_available

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_devices.py"
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if not pg_available():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")


def test_devices_uploading_across_two_workers_and_one_enclave_are_each_recorded_once(tmp_path: Path) -> None:
    # Prepare / Execute: the benchmark command itself: 30 devices, --workers 2, the shared enclave
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "30", "--rounds", "1", "--workers", "2", "--enclave",
                           "--task", "digits", "--postgres", PG_URL, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["workers"], run["enclave"], run["task"], run["database"]) == (2, True, "digits", "postgresql")
    assert run["stopped"] == "" and run["acknowledged"] == run["recorded"] == 30
    assert run["lost"] == [] and run["unacknowledged"] == [] and run["sha256_mismatch"] == []
    assert run["double_counted"] == 0 and run["rounds_whose_aggregate_differs"] == []
    assert [r["aggregated_updates"] for r in run["per_round_server"]] == [30]


def test_bench_auth_measures_each_worker_count_in_one_run() -> None:
    from qflare.bench.auth import run_scaling

    figures = run_scaling(PG_URL, workers=(1, 2), requests=96, clients=4)
    by = figures["by_workers"]
    assert set(by) == {"1", "2"}
    for k in by.values():
        assert k["errors"] == {"bare": 0, "authenticated": 0}
        assert k["authenticated_rps"] > 0 and k["server_cpu_ms_per_request"] > 0
    assert by["1"]["authenticated_vs_first"] == 1.0
