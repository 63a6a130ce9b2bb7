"""Per-device metric distributions (numpy only): the mean and the worst decile of one metric over devices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["summarize"]


def summarize(metric: str, prefix: str, values: Sequence[float]) -> dict[str, float]:
    """``{prefix}_{metric}_mean`` and ``{prefix}_{metric}_worst_decile`` of per-device values: the 10th
    percentile of an accuracy, the 90th of an error (MAE)."""
    arr = np.asarray(values, dtype=np.float64)
    worst = np.percentile(arr, 10 if metric == "accuracy" else 90)
    return {f"{prefix}_{metric}_mean": float(arr.mean()), f"{prefix}_{metric}_worst_decile": float(worst)}
