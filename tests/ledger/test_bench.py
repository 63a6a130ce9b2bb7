"""Smoke test of the ledger benchmark on a small tree (the real run uses 1,000,000 leaves)."""

from __future__ import annotations

from qflare.bench.ledger import run
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
