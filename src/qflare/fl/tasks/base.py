"""The task interface: data, model, metric and training defaults for one learning problem."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from qflare.errors import ConfigError
from qflare.fl.data.csv_series import CsvSource
from qflare.fl.models import TaskModel, build_model
from qflare.fl.spec import ModelSpec
from qflare.fl.train import TrainConfig, model_spec

__all__ = ["Task"]


class Task(ABC):
    """One federated learning problem, everything deterministic for a seed.

    Attributes
    ----------
    name:
        Registry name (``"digits"``, ``"digits-wide"``, ``"traffic"``, ``"pollution"``).
    metric:
        The headline metric in :meth:`evaluate`'s result (``"accuracy"`` or ``"mae"``).
    higher_is_better:
        Direction of ``metric``.
    partitions:
        Accepted values of ``client_dataset(partition=...)``; the first is the default.
    """

    name: str
    metric: str
    higher_is_better: bool
    partitions: tuple[str, ...]

    def build_model(self, seed: int = 0) -> TaskModel:
        """A freshly initialised model (the same for the same seed)."""
        return build_model(self.name, seed=seed)

    def model_spec(self) -> ModelSpec:
        """The spec every update for this task must match."""
        return model_spec(self.build_model())

    @abstractmethod
    def default_train_config(self) -> TrainConfig:
        """Local training hyperparameters tuned for this task."""

    @abstractmethod
    def client_dataset(
        self,
        partition_index: int,
        num_partitions: int,
        *,
        partition: str | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        csv_path: str | Path | CsvSource | None = None,
    ) -> Dataset[Any]:
        """Training data of client ``partition_index`` out of ``num_partitions``."""

    @abstractmethod
    def test_dataset(self, seed: int = 0, csv_path: str | Path | CsvSource | None = None) -> Dataset[Any]:
        """The held-out data the global model is evaluated on."""

    @abstractmethod
    def evaluate(self, model: TaskModel, dataset: Dataset[Any]) -> dict[str, float]:
        """Metrics of ``model`` on ``dataset``, ``metric`` and ``loss`` among them."""

    def is_better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` beats ``b``."""
        return a > b if self.higher_is_better else a < b

    def _partition_kind(self, partition: str | None) -> str:
        kind = partition or self.partitions[0]
        if kind not in self.partitions:
            raise ConfigError(
                f"task {self.name!r} supports partitions {list(self.partitions)}, not {kind!r}",
                reason="invalid_partition",
            )
        return kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_partition_index(partition_index: int, num_partitions: int) -> None:
    """``ConfigError`` unless ``0 <= partition_index < num_partitions``."""
    if num_partitions < 1 or not 0 <= partition_index < num_partitions:
        raise ConfigError(
            f"partition index {partition_index} is outside 0..{num_partitions - 1}", reason="invalid_partition"
        )
