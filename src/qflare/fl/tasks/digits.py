"""Handwritten digit classification with a small CNN."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from qflare.errors import ConfigError
from qflare.fl.data.csv_series import CsvSource
from qflare.fl.data.digits import digits_split
from qflare.fl.data.partition import dirichlet_partition, iid_partition
from qflare.fl.models import TaskModel
from qflare.fl.tasks.base import Task, check_partition_index
from qflare.fl.train import TrainConfig

__all__ = ["DigitsTask", "DigitsWideTask"]


_PARTS_LOCK = threading.Lock()


def _dirichlet_parts(seed: int, test_fraction: float, num_partitions: int, alpha: float, min_size: int | None
                     ) -> tuple[np.ndarray, ...]:
    """The Dirichlet split of :func:`digits_split`'s training labels, computed once per process (read-only).

    A split into 1000 parts takes about 0.5 s; the virtual devices of one process (``qflare.sim.fleet``)
    each ask for their own part of the same split, which made 1000 of them spend minutes before their first
    request. The lock makes the devices that start together wait for the first one's split instead of each
    computing it. Every device still gets its own copy of its own images.
    """
    with _PARTS_LOCK:
        return _dirichlet_parts_once(seed, test_fraction, num_partitions, alpha, min_size)


@lru_cache(maxsize=8)
def _dirichlet_parts_once(seed: int, test_fraction: float, num_partitions: int, alpha: float, min_size: int | None
                          ) -> tuple[np.ndarray, ...]:
    parts = dirichlet_partition(digits_split(seed, test_fraction).y_train, num_partitions, alpha, seed,
                                min_size=min_size)
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


class DigitsTask(Task):
    """``sklearn`` 8x8 digits, 10 classes, metric accuracy.

    Parameters
    ----------
    min_partition_size:
        Smallest client under a Dirichlet split (default: ``min(10, n // (2 * clients))``, at least 1,
        :func:`qflare.fl.data.partition.default_min_size`).
    test_fraction:
        Share of each class held out for testing.
    """

    name = "digits"
    metric = "accuracy"
    higher_is_better = True
    partitions = ("dirichlet", "iid")
    num_classes = 10

    def __init__(self, *, min_partition_size: int | None = None, test_fraction: float = 0.2) -> None:
        self.min_partition_size = min_partition_size
        self.test_fraction = test_fraction

    def default_train_config(self) -> TrainConfig:
        """Five local epochs of plain SGD per round."""
        return TrainConfig(epochs=5, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)

    def client_dataset(
        self,
        partition_index: int,
        num_partitions: int,
        *,
        partition: str | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        csv_path: str | Path | CsvSource | None = None,
    ) -> TensorDataset:
        """Client ``partition_index``'s share of the training images (Dirichlet label skew by default)."""
        check_partition_index(partition_index, num_partitions)
        _no_csv(csv_path)
        split = digits_split(seed, self.test_fraction)
        parts: Sequence[np.ndarray]
        if self._partition_kind(partition) == "iid":
            parts = iid_partition(len(split.y_train), num_partitions, seed)
        else:
            parts = _dirichlet_parts(seed, self.test_fraction, num_partitions, alpha, self.min_partition_size)
        idx = parts[partition_index]
        return TensorDataset(torch.from_numpy(split.x_train[idx]), torch.from_numpy(split.y_train[idx]))

    def test_dataset(self, seed: int = 0, csv_path: str | Path | CsvSource | None = None) -> TensorDataset:
        """The stratified held-out images."""
        _no_csv(csv_path)
        split = digits_split(seed, self.test_fraction)
        return TensorDataset(torch.from_numpy(split.x_test.copy()), torch.from_numpy(split.y_test.copy()))

    def evaluate(self, model: TaskModel, dataset: Dataset[Any]) -> dict[str, float]:
        """``accuracy`` and mean cross-entropy ``loss``."""
        images, labels = _tensors(dataset)
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in images.split(512)])
            loss = float(model.loss(logits, labels))
        accuracy = float((logits.argmax(dim=1) == labels).double().mean())
        return {"accuracy": accuracy, "loss": loss, "num_examples": float(len(labels))}


def _no_csv(csv_path: str | Path | CsvSource | None) -> None:
    if csv_path is not None:
        raise ConfigError("the digits task reads no CSV file", reason="invalid_config")


def _tensors(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        return images, labels
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


class DigitsWideTask(DigitsTask):
    """:class:`DigitsTask` with the ~1M-parameter CNN (:func:`~qflare.fl.models.cnn.digits_wide_cnn`).

    The same shipped images, splits and training defaults; only the model is 26x larger, so that
    uploads, ingest and aggregation are measured at a real update size (4 MB) without a dataset or
    weights download.
    """

    name = "digits-wide"
