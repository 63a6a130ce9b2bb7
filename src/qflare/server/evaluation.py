"""Central evaluation of each new global model on the task's held-out test set."""

from __future__ import annotations

import threading
from typing import Any

from qflare.errors import ConfigError, QFlareError
from qflare.fl.data.csv_series import CsvSource
from qflare.fl.serialize import load_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import set_arrays


class Evaluator:
    """Evaluates global models of one task; the test set and baseline are computed once.

    :meth:`check` loads them at server start, so a bad evaluation file is a start-up error naming
    ``evaluation.csv_path`` rather than a failure at the first round's close.
    """

    def __init__(self, task_name: str, *, seed: int = 0, csv_path: str | CsvSource | None = None) -> None:
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

    def check(self) -> None:
        """Load the test set now; raise ``ConfigError`` naming ``evaluation.csv_path`` if it cannot be used."""
        try:
            with self._lock:
                self._dataset()
        except (OSError, ValueError, QFlareError) as exc:
            where = f" ({self._csv})" if self._csv else ""
            message = exc.message if isinstance(exc, QFlareError) else str(exc)
            raise ConfigError(f"evaluation.csv_path{where}: {message}", reason="bad_evaluation_data") from None

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
