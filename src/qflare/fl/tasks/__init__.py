"""Learning tasks: ``get_task(name)`` for ``"digits"``, ``"digits-wide"``, ``"traffic"`` and ``"pollution"``."""

from __future__ import annotations

from collections.abc import Callable

from qflare.errors import ConfigError
from qflare.fl.tasks.base import Task
from qflare.fl.tasks.digits import DigitsTask, DigitsWideTask
from qflare.fl.tasks.forecast import ForecastDataset, ForecastTask

__all__ = ["TASKS", "DigitsTask", "DigitsWideTask", "ForecastDataset", "ForecastTask", "Task", "get_task"]

TASKS: dict[str, Callable[[], Task]] = {
    "digits": DigitsTask,
    "digits-wide": DigitsWideTask,  # the same data, a ~1M-parameter CNN
    "traffic": lambda: ForecastTask("traffic"),
    "pollution": lambda: ForecastTask("pollution"),
}


def get_task(name: str) -> Task:
    """The task registered under ``name``, with its default settings."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {sorted(TASKS)}", reason="unknown_task") from None
    return factory()
