"""Issue 12: ``qflare bench`` runs every benchmark (table, progress on stderr, JSON object last on stdout)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from qflare.bench import suite
from qflare.cli.app import app


def test_bench_without_a_name_runs_every_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: fast stand-ins for each benchmark, recording the budget they were given.
    calls: list[tuple[str, bool]] = []

    def fake(name: str) -> Any:
        def run(quick: bool) -> dict[str, Any]:
            calls.append((name, quick))
            return {"figure": 1.5, "nested": {"x": 2}}
        return run

    monkeypatch.setattr(suite, "BENCHMARKS", {n: fake(n) for n in suite.BENCHMARKS})
    # Execute
    result = CliRunner().invoke(app, ["bench", "--quick", "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    assert calls == [(n, True) for n in ("auth", "ingest", "aggregate", "round", "qkd", "enclave", "ledger")]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"machine", "budget", "auth", "ingest", "aggregate", "round", "qkd", "enclave", "ledger"}
    assert last["budget"] == "quick" and last["auth"]["nested"]["x"] == 2
    assert "ledger.nested.x" in result.stdout  # the table


def test_bench_name_still_runs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import qflare.bench.qkd as qkd

    monkeypatch.setattr(qkd, "run", lambda pulses, seconds: {"pulses_per_second": 1.0})
    result = CliRunner().invoke(app, ["bench", "qkd", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"pulses_per_second": 1.0}
