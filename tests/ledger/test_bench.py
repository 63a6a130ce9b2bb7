"""Smoke test of the ledger benchmark on a small tree (the real run uses 1,000,000 leaves)."""

from __future__ import annotations

from pathlib import Path

from qflare.bench.ledger import ledger_round_cost, run, run_sql
from qflare.ledger.store import MemoryLogStore


def test_bench_reports_every_figure() -> None:
    # Prepare / Execute
    result = run(0.05, MemoryLogStore(), proof_tree_size=5000, print_report=False)

    # Assert
    assert {
        "baseline_sha256_per_s",
        "memory_appends_per_s",
        "store_appends_per_s",
        "inclusion_ms",
        "consistency_ms",
    } <= set(result)
    assert result["inclusion_ms"] > 0 and result["consistency_ms"] > 0
    assert 0 < result["memory_appends_vs_baseline"] < 10


def test_sql_appends_and_the_per_round_cost_are_measured(tmp_path: Path) -> None:
    # The SQLite part of `qflare bench ledger` (PostgreSQL takes a URL; the simulation is too slow here).
    sql = run_sql(0.05, tmp_path)
    cost = ledger_round_cost(tmp_path, clients=2, rounds=2)
    assert sql["sqlite_appends_per_s"] > 0 and "postgres_appends_per_s" not in sql
    assert cost["ledger_ms_per_round"] > 0 and cost["clients"] == 2
