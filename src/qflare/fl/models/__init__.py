"""Torch models for the QFLARE tasks, and ``build_model(task_name)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qflare.errors import ConfigError
from qflare.fl.models.base import TaskModel
from qflare.fl.models.cnn import DigitsCNN, digits_wide_cnn
from qflare.fl.models.gru import GRUForecaster

__all__ = ["MODEL_FACTORIES", "DigitsCNN", "GRUForecaster", "TaskModel", "build_model", "digits_wide_cnn"]

MODEL_FACTORIES: dict[str, Callable[[], TaskModel]] = {
    "digits": DigitsCNN,
    "digits-wide": digits_wide_cnn,  # ~1M parameters: update-size benchmarks
    "traffic": GRUForecaster,
    "pollution": GRUForecaster,
}


def build_model(task_name: str, *, seed: int = 0) -> TaskModel:
    """The default model for ``task_name``, initialised deterministically from ``seed``.

    The global torch RNG is left as it was.
    """
    try:
        factory = MODEL_FACTORIES[task_name]
    except KeyError:
        raise ConfigError(
            f"no model for task {task_name!r}; known: {sorted(MODEL_FACTORIES)}", reason="unknown_task"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
