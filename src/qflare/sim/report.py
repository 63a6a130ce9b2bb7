"""Run artefacts: per-round metrics CSV, a PNG plot and ``summary.json``."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSV_FIELDS = (
    "round_id", "status", "close_reason", "num_selected", "num_updates", "total_examples",
    "accuracy", "mae", "baseline_mae", "loss", "train_loss", "round_seconds", "new_version",
)


def write_metrics_csv(rounds: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rounds:
            m = r.get("metrics") or {}
            w.writerow({**m, **{k: r.get(k) for k in ("round_id", "status", "close_reason", "new_version")}})


UNITS = {"traffic": "vehicles/h", "pollution": "NO2, ug/m3"}
"""The forecasting tasks' units on the generated city data (a user's CSV has its own)."""


def metric_label(metric: str, task: str, *, user_data: bool = False) -> str:
    """The y-axis label: the metric with its unit (``test MAE (vehicles/h)``, ``test accuracy (fraction)``)."""
    if metric == "accuracy":
        return "test accuracy (fraction correct)"
    unit = "the CSV's units" if user_data else UNITS.get(task, "the data's units")
    return f"test {metric.upper() if metric in ('mae', 'rmse') else metric} ({unit})"


def write_plot(rounds: Sequence[dict[str, Any]], metric: str, path: Path, *, title: str,
               ylabel: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rounds if r.get("status") == "aggregated" and r.get("metrics")]
    xs = [r["round_id"] for r in done]
    ys = [r["metrics"].get(metric) for r in done]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, ys, marker="o", label=f"federated global model ({metric})")
    base = [r["metrics"].get(f"baseline_{metric}") for r in done]
    if any(b is not None for b in base):
        ax.plot(xs, base, linestyle="--", color="grey", label="naive last-value forecaster")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel or f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
