"""The synthetic city: deterministic, and each component of the signal is really there."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.data.city import CityNetwork
from qflare.fl.data.series import SensorSeries


@pytest.fixture(scope="module")
def city() -> tuple[CityNetwork, SensorSeries]:
    network = CityNetwork(num_sensors=8, days=28, seed=5)
    return network, network.generate()


def _hours(series: SensorSeries) -> np.ndarray:
    return (series.timestamps - series.timestamps.astype("datetime64[D]")).astype(np.int64) // 60


def _weekday(series: SensorSeries) -> np.ndarray:
    return (series.timestamps.astype("datetime64[D]").astype(np.int64) + 3) % 7


def test_same_seed_gives_identical_arrays() -> None:
    # Execute
    a = CityNetwork(num_sensors=3, days=7, seed=11).generate()
    b = CityNetwork(num_sensors=3, days=7, seed=11).generate()
    c = CityNetwork(num_sensors=3, days=7, seed=12).generate()

    # Assert
    for name in ("traffic", "pollution"):
        np.testing.assert_array_equal(a.values(name), b.values(name))
        assert not np.array_equal(a.values(name), c.values(name))
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_a_sensor_does_not_depend_on_network_size() -> None:
    # Execute
    small = CityNetwork(num_sensors=2, days=7, seed=1)
    large = CityNetwork(num_sensors=6, days=7, seed=1)

    # Assert
    assert small.profiles() == large.profiles()[:2]
    np.testing.assert_array_equal(small.generate().values("traffic"), large.generate().values("traffic")[:, :2])


def test_shapes_units_and_time_axis(city: tuple[CityNetwork, SensorSeries]) -> None:
    # Prepare
    network, series = city

    # Assert
    assert series.values("traffic").shape == (28 * 24, 8)
    assert series.values("pollution").dtype == np.float32
    assert series.sensors == tuple(f"S{i:03d}" for i in range(8))
    assert np.all(np.diff(series.timestamps) == np.timedelta64(60, "m"))
    assert str(series.timestamps[0]) == "2024-03-04T00:00"
    assert np.all(series.values("traffic") >= 0) and np.all(np.isfinite(series.values("pollution")))
    assert set(series.covariates) == {"rain_mm_h", "wind_m_s"}


def test_quarter_hourly_network() -> None:
    # Execute
    series = CityNetwork(num_sensors=2, days=2, step_minutes=15).generate()

    # Assert
    assert series.values("traffic").shape == (2 * 96, 2)
    assert series.steps_per_day == 96


def test_daily_cycle_and_rush_hours(city: tuple[CityNetwork, SensorSeries]) -> None:
    # Prepare
    _, series = city
    traffic, hours, weekday = series.values("traffic"), _hours(series), _weekday(series)
    workday = weekday < 5

    # Execute
    night = traffic[workday & (hours >= 2) & (hours <= 4)].mean(axis=0)
    rush = traffic[workday & np.isin(hours, [8, 17, 18])].mean(axis=0)

    # Assert: every sensor is several times busier at rush hour than at night
    assert np.all(rush > 4 * night)


def test_weekly_cycle(city: tuple[CityNetwork, SensorSeries]) -> None:
    # Prepare
    _, series = city
    traffic, hours, weekday = series.values("traffic"), _hours(series), _weekday(series)
    morning = hours == 8

    # Execute
    weekday_morning = traffic[morning & (weekday < 5)].mean(axis=0)
    sunday_morning = traffic[morning & (weekday == 6)].mean(axis=0)

    # Assert: no Sunday morning rush
    assert np.all(sunday_morning < 0.8 * weekday_morning)


def test_sensors_are_non_iid(city: tuple[CityNetwork, SensorSeries]) -> None:
    # Prepare
    network, series = city
    traffic = series.values("traffic")

    workday = _weekday(series) < 5
    hours = _hours(series)

    # Execute
    means = traffic.mean(axis=0)
    profiles = np.stack([traffic[workday & (hours == h)].mean(axis=0) for h in range(24)])  # (24, sensors)
    peak_hour = profiles.argmax(axis=0)

    # Assert: scales differ several-fold, and sensors peak at different times (morning vs evening)
    assert means.max() > 2 * means.min()
    assert len({p.kind for p in network.profiles()}) >= 2
    assert peak_hour.min() <= 9 and peak_hour.max() >= 16


def test_pollution_follows_traffic_and_weather(city: tuple[CityNetwork, SensorSeries]) -> None:
    # Prepare
    network, series = city
    traffic, pollution = series.values("traffic"), series.values("pollution")
    wind = series.covariates["wind_m_s"]
    rain = series.covariates["rain_mm_h"]

    # Execute
    corr_traffic = [np.corrcoef(traffic[:, i], pollution[:, i])[0, 1] for i in range(8)]
    calm, windy = wind < np.quantile(wind, 0.25), wind > np.quantile(wind, 0.75)
    pollution_calm, pollution_windy = pollution[calm].mean(), pollution[windy].mean()

    # Assert
    assert min(corr_traffic) > 0.3
    assert pollution_calm > pollution_windy
    assert rain.max() > 0 and (rain > 0).mean() < 0.5  # rain comes in episodes


def test_rain_changes_flow_by_each_sensors_sensitivity() -> None:
    # Prepare: the same city with and without its rain, isolating the rain effect
    network = CityNetwork(num_sensors=6, days=28, seed=2)
    series = network.generate()
    rain = series.covariates["rain_mm_h"]
    heavy = rain >= 4
    profiles = network.profiles()

    # Execute: ratio of flow in heavy rain to flow at the same hour of the same weekday type otherwise
    hours = _hours(series)
    ratios = []
    for i in range(6):
        t = series.values("traffic")[:, i]
        expected = np.array([t[(hours == h) & ~heavy & (rain == 0)].mean() for h in hours[heavy]])
        ratios.append(float(np.mean(t[heavy] / expected)))

    # Assert: sensors with a more negative sensitivity lose more flow in rain
    order_by_sensitivity = np.argsort([p.rain_sensitivity for p in profiles])
    assert heavy.sum() > 0
    assert np.corrcoef(np.array(ratios)[order_by_sensitivity], np.arange(6))[0, 1] > 0.5


@pytest.mark.parametrize("kwargs", [{"num_sensors": 0}, {"days": 0}, {"step_minutes": 7}, {"start": "yesterday"}])
def test_invalid_network_raises_config_error(kwargs: dict) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError):
        CityNetwork(**kwargs).generate()
