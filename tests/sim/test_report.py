"""Run artefacts: the plot is named after the task's metric and its axis carries the unit."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.sim.report import metric_label, write_plot


@pytest.mark.parametrize(
    ("metric", "task", "user_data", "label"),
    [
        ("accuracy", "digits", False, "test accuracy (fraction correct)"),
        ("mae", "traffic", False, "test MAE (vehicles/h)"),
        ("mae", "pollution", False, "test MAE (NO2, ug/m3)"),
        ("mae", "traffic", True, "test MAE (the CSV's units)"),
    ],
)
def test_the_axis_label_names_the_unit(metric: str, task: str, user_data: bool, label: str) -> None:
    assert metric_label(metric, task, user_data=user_data) == label


def test_write_plot_uses_the_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: list[str] = []
    real_close = plt.close

    def close(fig: object) -> None:
        seen.append(fig.axes[0].get_ylabel())  # type: ignore[attr-defined]
        real_close(fig)  # type: ignore[arg-type]

    monkeypatch.setattr(plt, "close", close)
    rounds = [{"round_id": 1, "status": "aggregated", "metrics": {"mae": 3.0, "baseline_mae": 4.0}}]
    write_plot(rounds, "mae", tmp_path / "mae.png", title="t", ylabel=metric_label("mae", "traffic"))
    assert (tmp_path / "mae.png").read_bytes()[:4] == b"\x89PNG"
    assert seen == ["test MAE (vehicles/h)"]
