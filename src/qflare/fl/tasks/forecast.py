"""Next-reading forecasting of traffic flow or pollution, one sensor per device."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from qflare.errors import ConfigError
from qflare.fl.data.city import CityNetwork
from qflare.fl.data.csv_series import CsvLayout, CsvSource, load_series_csv
from qflare.fl.data.partition import group_partition, iid_partition
from qflare.fl.data.series import SensorSeries
from qflare.fl.data.windows import WindowSet, make_windows
from qflare.fl.models import TaskModel
from qflare.fl.tasks.base import Task, check_partition_index
from qflare.fl.train import TrainConfig

__all__ = ["ForecastDataset", "ForecastTask"]


class ForecastDataset(TensorDataset):
    """Samples ``(window (steps, 1), calendar (5,), target)``, standardised per sensor.

    Parameters
    ----------
    windows:
        The numpy samples; kept as ``self.windows`` for de-normalising (``mean``, ``std``),
        per-sensor breakdowns (``sensor``) and timing (``target_time``).
    steps_per_day:
        Samples per day of the source series (for the same-time-yesterday baseline).
    """

    def __init__(self, windows: WindowSet, steps_per_day: int) -> None:
        super().__init__(
            torch.from_numpy(np.ascontiguousarray(windows.window[:, :, None])),
            torch.from_numpy(np.ascontiguousarray(windows.calendar)),
            torch.from_numpy(np.ascontiguousarray(windows.target)),
        )
        self.windows = windows
        self.steps_per_day = steps_per_day


class ForecastTask(Task):
    """Forecast the next reading of ``variable`` from the past ``window`` steps; metric MAE.

    Parameters
    ----------
    name:
        Registry name and, unless ``variable`` is given, the variable (``traffic``/``pollution``).
    network:
        The synthetic city used when no CSV is given; its seed is replaced by the call's ``seed``.
    window:
        Past steps the model sees (24 = one day of hourly readings).
    test_days:
        Last days of the series held out for testing.
    variable:
        Series variable to forecast (default: ``name``).

    With ``csv_path``, the series comes from :func:`~qflare.fl.data.csv_series.load_series_csv`
    (its columns are the sensors) instead of the generator. Devices are sensors: by default
    (``partition="sensor"``) client ``k`` of ``n`` gets the ``k``-th run of sensors, one sensor
    each when ``n`` equals the number of sensors. ``"iid"`` pools all sensors' windows instead.
    """

    metric = "mae"
    higher_is_better = False
    partitions = ("sensor", "iid")

    def __init__(
        self,
        name: str,
        *,
        network: CityNetwork | None = None,
        window: int = 24,
        test_days: int = 7,
        variable: str | None = None,
    ) -> None:
        self.name = name
        self.variable = variable or name
        self.network = network or CityNetwork()
        self.window = window
        self.test_days = test_days

    def default_train_config(self) -> TrainConfig:
        """Two local epochs of Adam per round."""
        return TrainConfig(epochs=2, batch_size=32, lr=0.003, optimizer="adam")

    def series(self, seed: int = 0, csv_path: str | Path | CsvSource | None = None) -> SensorSeries:
        """The raw series behind the datasets."""
        return _series(self._source(seed, csv_path), self.variable)

    def client_dataset(
        self,
        partition_index: int,
        num_partitions: int,
        *,
        partition: str | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        csv_path: str | Path | CsvSource | None = None,
    ) -> ForecastDataset:
        """Training windows of client ``partition_index`` (its sensors' training days)."""
        check_partition_index(partition_index, num_partitions)
        kind = self._partition_kind(partition)
        train, _, steps_per_day = self._windows(seed, csv_path)
        if kind == "iid":
            parts = iid_partition(len(train), num_partitions, seed)
        else:
            parts = group_partition(train.sensor, num_partitions)
        return ForecastDataset(train.subset(parts[partition_index]), steps_per_day)

    def test_dataset(self, seed: int = 0, csv_path: str | Path | CsvSource | None = None) -> ForecastDataset:
        """Windows whose targets fall in the last ``test_days`` days, all sensors."""
        _, test, steps_per_day = self._windows(seed, csv_path)
        return ForecastDataset(test.subset(np.arange(len(test))), steps_per_day)

    def evaluate(self, model: TaskModel, dataset: Dataset[Any]) -> dict[str, float]:
        """``mae`` and ``rmse`` in original units, ``loss`` (Huber, standardised units)."""
        data = _forecast_dataset(dataset)
        window, calendar, target = data.tensors
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(w, c) for w, c in zip(window.split(1024), calendar.split(1024), strict=True)])
            loss = float(model.loss(pred, target))
        error = (pred.double().numpy() - target.double().numpy()) * data.windows.std
        return {
            "mae": float(np.abs(error).mean()),
            "rmse": float(np.sqrt((error**2).mean())),
            "loss": loss,
            "num_examples": float(len(target)),
        }

    def naive_baseline(self, dataset: Dataset[Any]) -> dict[str, float]:
        """MAE (original units) of "same as the last reading" and, when the window spans a day,
        of "same as this time yesterday", on the same samples."""
        data = _forecast_dataset(dataset)
        w = data.windows
        result = {"mae": float((np.abs(w.window[:, -1] - w.target) * w.std).mean())}
        if w.window.shape[1] >= data.steps_per_day:
            yesterday = w.window[:, -data.steps_per_day]
            result["seasonal_mae"] = float((np.abs(yesterday - w.target) * w.std).mean())
        return result

    def _source(self, seed: int, csv_path: str | Path | CsvSource | None) -> _Source:
        if csv_path is None:
            return dataclasses.replace(self.network, seed=seed)
        layout = csv_path.layout if isinstance(csv_path, CsvSource) else CsvLayout()
        path = Path(csv_path.path if isinstance(csv_path, CsvSource) else csv_path).resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read CSV {path}: {exc}", reason="unreadable_csv") from exc
        return _CsvFile(str(path), stat.st_mtime_ns, stat.st_size, layout)  # a changed file is re-read

    def _windows(self, seed: int, csv_path: str | Path | CsvSource | None) -> tuple[WindowSet, WindowSet, int]:
        return _windows(self._source(seed, csv_path), self.variable, self.window, self.test_days)


@dataclasses.dataclass(frozen=True)
class _CsvFile:
    path: str
    mtime_ns: int
    size: int
    layout: CsvLayout = CsvLayout()


_Source = CityNetwork | _CsvFile


@lru_cache(maxsize=8)
def _series(source: _Source, variable: str) -> SensorSeries:
    if isinstance(source, CityNetwork):
        return source.generate()
    lay = source.layout
    return load_series_csv(source.path, variable=variable, delimiter=lay.delimiter, decimal=lay.decimal,
                           timestamp_columns=lay.timestamp_columns, timestamp_format=lay.timestamp_format,
                           columns=lay.columns, missing_sentinel=lay.missing_sentinel)


@lru_cache(maxsize=8)
def _windows(source: _Source, variable: str, window: int, test_days: int) -> tuple[WindowSet, WindowSet, int]:
    # Cached: every client of a simulation derives its data from the same series.
    series = _series(source, variable)
    train, test = make_windows(series, variable, window=window, test_days=test_days)
    return train, test, series.steps_per_day


def _forecast_dataset(dataset: Dataset[Any]) -> ForecastDataset:
    if not isinstance(dataset, ForecastDataset):
        raise ConfigError(f"expected a ForecastDataset, got {type(dataset).__name__}", reason="invalid_dataset")
    if len(dataset) == 0:
        raise ConfigError("cannot evaluate on an empty dataset", reason="empty_dataset")
    return dataset
