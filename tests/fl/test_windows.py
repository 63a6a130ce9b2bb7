"""Windowing: calendar features, held-out last days, normalisation fitted on training days only."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.data.series import SensorSeries
from qflare.fl.data.windows import calendar_features, make_windows


def _series(values: np.ndarray, step_minutes: int = 60) -> SensorSeries:
    start = np.datetime64("2024-03-04T00:00")  # a Monday
    stamps = start + np.arange(values.shape[0]) * np.timedelta64(step_minutes, "m")
    return SensorSeries(
        stamps, tuple(f"s{i}" for i in range(values.shape[1])), {"x": values.astype(np.float32)}, step_minutes
    )


def test_calendar_features_of_known_times() -> None:
    # Prepare
    stamps = np.array(["2024-03-04T00:00", "2024-03-04T06:00", "2024-03-09T18:00", "2024-03-10T12:00"], "datetime64[m]")

    # Execute
    features = calendar_features(stamps)

    # Assert: Monday midnight, Monday 06:00, Saturday 18:00, Sunday noon
    np.testing.assert_allclose(features[0], [0, 1, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(features[1, :2], [1, 0], atol=1e-6)
    np.testing.assert_allclose(features[2, :2], [-1, 0], atol=1e-6)
    np.testing.assert_allclose(features[2, 2:4], [np.sin(2 * np.pi * 5 / 7), np.cos(2 * np.pi * 5 / 7)], atol=1e-6)
    assert features[:, 4].tolist() == [0, 0, 1, 1]
    assert features.dtype == np.float32


def test_windows_targets_and_split() -> None:
    # Prepare: 5 days hourly, 2 sensors, value = step index (sensor 1: offset by 1000)
    steps = np.arange(5 * 24, dtype=np.float64)
    series = _series(np.stack([steps, steps + 1000], axis=1))

    # Execute
    train, test = make_windows(series, "x", window=6, test_days=2)

    # Assert
    split = 3 * 24
    assert len(train) == 2 * (split - 6) and len(test) == 2 * 2 * 24
    assert set(train.sensor.tolist()) == {0, 1}
    original = train.window * train.std[:, None] + train.mean[:, None]
    target = train.target * train.std + train.mean
    np.testing.assert_allclose(original[0], np.arange(6), atol=1e-3)  # first window: steps 0..5
    np.testing.assert_allclose(target[0], 6, atol=1e-3)
    assert train.target_time.max() < test.target_time.min()
    assert test.target_time.min() == series.timestamps[split]
    np.testing.assert_allclose(original[:, -1] + 1, target, atol=1e-2)  # the window ends right before the target


def test_normalisation_uses_training_days_only() -> None:
    # Prepare: the same training days, wildly different test days
    rng = np.random.default_rng(0)
    base = rng.normal(100, 10, size=(6 * 24, 3))
    changed = base.copy()
    changed[-2 * 24 :] *= 50

    # Execute
    train_a, test_a = make_windows(_series(base), "x", window=12, test_days=2)
    train_b, test_b = make_windows(_series(changed), "x", window=12, test_days=2)

    # Assert
    np.testing.assert_array_equal(train_a.mean, train_b.mean)
    np.testing.assert_array_equal(train_a.std, train_b.std)
    np.testing.assert_array_equal(train_a.window, train_b.window)
    for s in range(3):
        expected = base[: 4 * 24, s]
        assert train_a.mean[train_a.sensor == s][0] == pytest.approx(expected.mean(), rel=1e-5)
        assert train_a.std[train_a.sensor == s][0] == pytest.approx(expected.std(), rel=1e-5)
    assert not np.array_equal(test_a.target, test_b.target)


def test_flat_sensor_stays_finite() -> None:
    # Prepare
    values = np.full((4 * 24, 1), 7.0)

    # Execute
    train, test = make_windows(_series(values), "x", window=4, test_days=1)

    # Assert
    assert np.isfinite(train.window).all() and np.isfinite(test.target).all()


def test_subset_selects_consistently() -> None:
    # Prepare
    train, _ = make_windows(_series(np.arange(4 * 24 * 2.0).reshape(-1, 2)), "x", window=4, test_days=1)

    # Execute
    part = train.subset(np.array([3, 0]))

    # Assert
    assert len(part) == 2
    np.testing.assert_array_equal(part.window[1], train.window[0])
    assert part.target_time[0] == train.target_time[3]


@pytest.mark.parametrize(("window", "test_days"), [(24, 3), (0, 1), (4, 0), (3 * 24, 1)])
def test_too_short_series_raise(window: int, test_days: int) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        make_windows(_series(np.ones((3 * 24, 1))), "x", window=window, test_days=test_days)
    assert info.value.reason == "series_too_short"


def test_unknown_variable() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        make_windows(_series(np.ones((5 * 24, 1))), "traffic", window=4, test_days=1)
    assert info.value.reason == "unknown_variable"
