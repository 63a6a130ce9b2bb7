"""The one in-memory shape of sensor time series, from the generator or from a CSV file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qflare.errors import ConfigError

__all__ = ["SensorSeries"]

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, eq=False)
class SensorSeries:
    """Regularly sampled readings of several sensors, one or more variables.

    Parameters
    ----------
    timestamps:
        ``datetime64[m]`` array of shape ``(T,)``, strictly increasing by ``step_minutes``.
    sensors:
        Sensor ids, one per column.
    variables:
        Variable name (``"traffic"``, ``"pollution"``) -> float32 array ``(T, len(sensors))``,
        in original units, no missing values.
    step_minutes:
        Sampling period; divides a day.
    covariates:
        City-wide series of shape ``(T,)`` (e.g. rain, wind) that explain the data but are not
        model inputs.
    missing_filled:
        How many values were missing in the source and forward-filled.
    """

    timestamps: np.ndarray
    sensors: tuple[str, ...]
    variables: Mapping[str, np.ndarray]
    step_minutes: int
    covariates: Mapping[str, np.ndarray] = field(default_factory=dict)
    missing_filled: int = 0

    def __post_init__(self) -> None:
        steps = len(self.timestamps)
        if self.step_minutes <= 0 or MINUTES_PER_DAY % self.step_minutes:
            raise ConfigError(f"step of {self.step_minutes} min does not divide a day", reason="invalid_series")
        for name, values in self.variables.items():
            if values.shape != (steps, len(self.sensors)):
                raise ConfigError(
                    f"variable {name!r} has shape {values.shape}, expected {(steps, len(self.sensors))}",
                    reason="invalid_series",
                )

    @property
    def num_steps(self) -> int:
        """Number of time steps ``T``."""
        return len(self.timestamps)

    @property
    def num_sensors(self) -> int:
        """Number of sensors (columns)."""
        return len(self.sensors)

    @property
    def steps_per_day(self) -> int:
        """Time steps in one day."""
        return MINUTES_PER_DAY // self.step_minutes

    def values(self, variable: str) -> np.ndarray:
        """The ``(T, N)`` array of one variable; ``ConfigError`` if absent."""
        try:
            return self.variables[variable]
        except KeyError:
            raise ConfigError(
                f"series has no variable {variable!r}; it has {sorted(self.variables)}", reason="unknown_variable"
            ) from None

    def select_sensors(self, indices: Sequence[int] | np.ndarray) -> SensorSeries:
        """The same series restricted to some sensors (copies)."""
        idx = np.asarray(indices, dtype=np.int64)
        return SensorSeries(
            timestamps=self.timestamps.copy(),
            sensors=tuple(self.sensors[i] for i in idx),
            variables={name: values[:, idx].copy() for name, values in self.variables.items()},
            step_minutes=self.step_minutes,
            covariates={name: values.copy() for name, values in self.covariates.items()},
            missing_filled=self.missing_filled,
        )
