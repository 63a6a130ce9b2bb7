"""Central evaluation of each new global model on the task's held-out test set."""

from __future__ import annotations

import threading
from typing import Any

from qflare.fl.serialize import load_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import set_arrays


class Evaluator:
    """Evaluates global models of one task; the test set and baseline are computed once, lazily."""

    def __init__(self, task_name: str, *, seed: int = 0, csv_path: str | None = None) -> None:
        self.task = get_task(task_name)
        self._seed = seed
        self._csv = csv_path
        self._lock = threading.Lock()
        self._data: Any = None
        self._baseline: dict[str, float] = {}

    def _dataset(self) -> Any:
        if self._data is None:
            self._data = self.task.test_dataset(seed=self._seed, csv_path=self._csv)
            baseline = getattr(self.task, "naive_baseline", None)
            if baseline is not None:
                self._baseline = {f"baseline_{k}": float(v) for k, v in baseline(self._data).items()}
        return self._data

    def evaluate(self, model_blob: bytes) -> dict[str, float]:
        import torch

        with self._lock:
            data = self._dataset()
            model = self.task.build_model()
            arrays, _ = load_arrays(model_blob, None)
            set_arrays(model, arrays)
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.task.evaluate(model, data).items()}
            return {**metrics, **self._baseline}
