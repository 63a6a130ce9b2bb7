"""``qflare simulate --personalize`` over real HTTP: each device reports its own held-out metric, signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.sim.runner import SimulationConfig, run_simulation


@pytest.mark.slow
def test_personalised_run_over_http_reports_every_device(tmp_path: Path) -> None:
    # Prepare: 3 label-skewed digits devices, 3 rounds, FedPer (the head stays on each device)
    sim = SimulationConfig(task="digits", clients=3, rounds=3, personalize="fedper", runs_dir=tmp_path / "runs")

    # Execute
    summary = run_simulation(sim)

    # Assert: every device reported; the distribution beside the global model's metric
    assert summary["personalize"] == "fedper" and summary["personalized_reports"] == 3
    assert len(summary["per_device"]) == 3 and {d["method"] for d in summary["per_device"]} == {"fedper"}
    for key in ("personalized_accuracy_mean", "personalized_accuracy_worst_decile", "global_accuracy_mean",
                "global_accuracy_worst_decile", "final_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    # Label-skewed shards: a device's own head fits its own labels better than the global one
    assert summary["personalized_accuracy_mean"] > summary["global_accuracy_mean"]
