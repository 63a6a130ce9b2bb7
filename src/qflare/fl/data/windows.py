"""Turn a sensor series into (past window, calendar features) -> next value samples.

The last ``test_days`` days are held out; each sensor is standardised with the mean and standard
deviation of its own training days only, so nothing about the test period leaks into training
(and each device can normalise its own data without sharing anything).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qflare.errors import ConfigError
from qflare.fl.data.series import SensorSeries

__all__ = ["CALENDAR_FEATURES", "WindowSet", "calendar_features", "make_windows"]

CALENDAR_FEATURES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos", "weekend")


def calendar_features(timestamps: np.ndarray) -> np.ndarray:
    """float32 ``(T, 5)``: sin/cos of hour of day, sin/cos of day of week (Monday = 0), weekend flag."""
    stamps = np.asarray(timestamps).astype("datetime64[m]")
    days = stamps.astype("datetime64[D]")
    hours = (stamps - days).astype(np.int64) / 60.0
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_angle, week_angle = 2 * np.pi * hours / 24, 2 * np.pi * weekday / 7
    return np.stack(
        [np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle), (weekday >= 5) * 1.0],
        axis=1,
    ).astype(np.float32)


@dataclass(frozen=True, eq=False)
class WindowSet:
    """Forecasting samples as numpy arrays, ``n`` samples.

    Parameters
    ----------
    window:
        float32 ``(n, steps)`` past readings, standardised per sensor.
    calendar:
        float32 ``(n, 5)`` calendar features of the time being forecast.
    target:
        float32 ``(n,)`` next reading, standardised.
    sensor:
        int64 ``(n,)`` column index of the sensor in the source series.
    mean, std:
        float32 ``(n,)`` the sensor's training mean and standard deviation: original units are
        ``value * std + mean``.
    target_time:
        ``datetime64[m]`` ``(n,)`` time of the target reading.
    """

    window: np.ndarray
    calendar: np.ndarray
    target: np.ndarray
    sensor: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    target_time: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, indices: np.ndarray) -> WindowSet:
        """The samples at ``indices`` (copies)."""
        idx = np.asarray(indices, dtype=np.int64)
        return WindowSet(*(getattr(self, f)[idx] for f in _FIELDS))


_FIELDS = ("window", "calendar", "target", "sensor", "mean", "std", "target_time")


def make_windows(series: SensorSeries, variable: str, *, window: int, test_days: int) -> tuple[WindowSet, WindowSet]:
    """Split ``series`` into training and held-out samples for one variable.

    A sample's target is the reading at step ``t``; its window is steps ``t - window .. t - 1``.
    Training targets lie before the last ``test_days`` days, test targets inside them (their
    windows may reach back into training days, as a deployed forecaster's would).

    Raises
    ------
    ConfigError
        reason ``series_too_short`` when there is not at least one day of training targets.
    """
    values = series.values(variable).astype(np.float64)
    steps = series.num_steps
    split = steps - test_days * series.steps_per_day
    if window < 1 or test_days < 1 or split - window < series.steps_per_day:
        raise ConfigError(
            f"{steps} steps cannot hold a {window}-step window, a day of training targets and {test_days} test day(s)",
            reason="series_too_short",
        )
    mean = values[:split].mean(axis=0)
    std = values[:split].std(axis=0)
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)  # a flat sensor stays finite
    scaled = (values - mean) / std
    calendar = calendar_features(series.timestamps)
    return (
        _windows(series, scaled, calendar, mean, std, range(window, split), window),
        _windows(series, scaled, calendar, mean, std, range(split, steps), window),
    )


def _windows(
    series: SensorSeries,
    scaled: np.ndarray,
    calendar: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    targets: range,
    window: int,
) -> WindowSet:
    t = np.asarray(targets, dtype=np.int64)
    n_sensors = series.num_sensors
    # Sensor-major order: all of sensor 0's samples, then sensor 1's, ...
    steps = np.tile(t, n_sensors)
    sensor = np.repeat(np.arange(n_sensors, dtype=np.int64), len(t))
    lags = steps[:, None] - window + np.arange(window)[None, :]
    return WindowSet(
        window=scaled[lags, sensor[:, None]].astype(np.float32),
        calendar=calendar[steps],
        target=scaled[steps, sensor].astype(np.float32),
        sensor=sensor,
        mean=mean[sensor].astype(np.float32),
        std=std[sensor].astype(np.float32),
        target_time=series.timestamps[steps],
    )
