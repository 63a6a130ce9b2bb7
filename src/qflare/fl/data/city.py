"""A deterministic synthetic smart-city sensor network: traffic flow and NO2-like air pollution.

Every sensor sees the same city-wide weather but has its own road type, scale, timing and
sensitivities, so the data are naturally non-IID across sensors (one sensor = one edge device).
The signal, per sensor ``i`` and time ``t`` (``h`` = hour of day shifted by the sensor's phase):

traffic
    ``scale_i * daily_shape_i(h, weekday) * rain_effect_i(t) * incident_i(t) * noise_i(t)``:
    a night floor, a daytime plateau, morning (08:00) and evening (17:30) rush-hour peaks whose
    sizes depend on the road type (inbound, outbound, arterial, commercial), a midday bump,
    weekday factors (Friday busier) and a weekend shape without rush hours. Rain changes flow by
    a per-sensor fraction (some roads empty, others fill with people who would have cycled);
    short incidents cut flow; noise is log-normal, partly autocorrelated.
pollution
    ``background_i + regional(t) + emission_i * accumulated_load_i(t) * mixing(h) *
    dispersion(wind) * washout(rain) * noise``: the local traffic load accumulates with an
    hour-scale memory, night-time boundary layers trap it, wind disperses it, rain washes it
    out, and a slowly varying regional background adds transported pollution.

The same :class:`CityNetwork` (seed included) always produces identical arrays, and sensor ``i``'s
profile does not depend on how many sensors the network has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qflare.errors import ConfigError
from qflare.fl.data.series import MINUTES_PER_DAY, SensorSeries

__all__ = ["ROAD_KINDS", "CityNetwork", "SensorProfile"]

# Road type -> (morning peak, evening peak, midday bump, weekend level), relative to the scale.
ROAD_KINDS: dict[str, tuple[float, float, float, float]] = {
    "inbound": (1.00, 0.55, 0.40, 0.60),
    "outbound": (0.55, 1.00, 0.40, 0.60),
    "arterial": (0.85, 0.90, 0.55, 0.70),
    "commercial": (0.35, 0.50, 0.90, 1.00),
}
_WEEKDAY_FACTOR = np.array([0.97, 1.00, 1.00, 1.01, 1.04, 1.0, 0.85])  # Mon..Sun (weekend shape differs)

# Independent random streams, so that one component can change without reshuffling the others.
_STREAM_PROFILE, _STREAM_WEATHER, _STREAM_SENSOR_NOISE = 1, 2, 3


@dataclass(frozen=True)
class SensorProfile:
    """The hidden parameters of one sensor (what makes its data differ from the others)."""

    sensor_id: str
    kind: str
    scale: float  # vehicles per hour at a typical weekday peak
    phase_hours: float  # the daily pattern runs this much later (negative: earlier)
    morning_peak: float
    evening_peak: float
    midday: float
    weekend_level: float
    rain_sensitivity: float  # relative change of flow in heavy rain (>= 4 mm/h)
    emission: float  # NO2 in ug/m3 per unit of relative traffic load
    background: float  # local NO2 background in ug/m3


@dataclass(frozen=True)
class CityNetwork:
    """Parameters of a synthetic sensor network; :meth:`generate` builds its series.

    Parameters
    ----------
    num_sensors:
        Number of roadside sensors (each measures traffic flow and pollution).
    days:
        Length of the series in days.
    step_minutes:
        Sampling period (60 for hourly, 15 for quarter-hourly).
    start:
        First timestamp, ISO 8601 (default: a Monday at midnight).
    seed:
        Master seed; everything is derived from it.
    """

    num_sensors: int = 10
    days: int = 42
    step_minutes: int = 60
    start: str = "2024-03-04T00:00"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_sensors < 1 or self.days < 1:
            raise ConfigError("a city network needs at least one sensor and one day", reason="invalid_network")
        if self.step_minutes <= 0 or MINUTES_PER_DAY % self.step_minutes:
            raise ConfigError(f"step of {self.step_minutes} min does not divide a day", reason="invalid_network")

    @property
    def num_steps(self) -> int:
        """Number of time steps."""
        return self.days * MINUTES_PER_DAY // self.step_minutes

    def timestamps(self) -> np.ndarray:
        """``datetime64[m]`` time axis."""
        try:
            start = np.datetime64(self.start, "m")
        except ValueError as exc:
            raise ConfigError(f"bad start time {self.start!r}", reason="invalid_network") from exc
        return start + np.arange(self.num_steps) * np.timedelta64(self.step_minutes, "m")

    def profiles(self) -> list[SensorProfile]:
        """Each sensor's hidden parameters, drawn from its own random stream."""
        return [self._profile(i) for i in range(self.num_sensors)]

    def weather(self) -> dict[str, np.ndarray]:
        """City-wide ``rain_mm_h`` and ``wind_m_s`` series of shape ``(T,)``."""
        rng = np.random.default_rng([self.seed, _STREAM_WEATHER])
        step_h = self.step_minutes / 60
        hours = _hour_of_day(self.timestamps())
        rain = np.zeros(self.num_steps)
        raining, intensity = False, 0.0
        for t in range(self.num_steps):
            # Episodes start about once every four days and last about six hours.
            if not raining and rng.random() < step_h / 96:
                raining, intensity = True, float(rng.lognormal(np.log(2.0), 0.6))
            elif raining and rng.random() < step_h / 6:
                raining = False
            rain[t] = intensity * rng.lognormal(0.0, 0.3) if raining else 0.0
        log_wind = _ar1(rng, self.num_steps, phi=0.97**step_h, sigma=0.08 * np.sqrt(step_h))
        diurnal = 1 + 0.25 * np.sin(2 * np.pi * (hours - 9) / 24)  # windiest mid-afternoon
        wind = 3.5 * np.exp(log_wind) * diurnal * np.where(rain > 0, 1.3, 1.0)  # fronts bring wind
        return {"rain_mm_h": rain, "wind_m_s": np.clip(wind, 0.3, 25.0)}

    def generate(self) -> SensorSeries:
        """Build the series: variables ``traffic`` (vehicles/h) and ``pollution`` (ug/m3)."""
        timestamps = self.timestamps()
        weather = self.weather()
        rain, wind = weather["rain_mm_h"], weather["wind_m_s"]
        hours, weekday = _hour_of_day(timestamps), _day_of_week(timestamps)
        step_h = self.step_minutes / 60
        profiles = self.profiles()
        regional = _regional_background(self.seed, self.num_steps, step_h)
        traffic = np.empty((self.num_steps, self.num_sensors))
        pollution = np.empty((self.num_steps, self.num_sensors))
        for i, p in enumerate(profiles):
            rng = np.random.default_rng([self.seed, _STREAM_SENSOR_NOISE, i])
            load = _daily_shape(p, hours, weekday)
            load = load * (1 + p.rain_sensitivity * np.minimum(rain / 4, 1))
            load = load * _incidents(rng, self.num_steps, step_h)
            load = load * np.exp(_ar1(rng, self.num_steps, 0.6**step_h, 0.05) + rng.normal(0, 0.04, self.num_steps))
            traffic[:, i] = p.scale * load
            accumulated = _exponential_memory(load, rho=0.55**step_h)
            mixing = 1 + 0.4 * np.cos(2 * np.pi * (hours - 4) / 24)  # low boundary layer at night
            dispersion = (3.5 / wind) ** 0.6
            washout = 1 - 0.35 * np.minimum(rain / 4, 1)
            local = p.emission * accumulated * mixing * dispersion * washout
            noise = np.exp(_ar1(rng, self.num_steps, 0.7**step_h, 0.04) + rng.normal(0, 0.03, self.num_steps))
            pollution[:, i] = (p.background + regional + local) * noise
        return SensorSeries(
            timestamps=timestamps,
            sensors=tuple(p.sensor_id for p in profiles),
            variables={
                "traffic": np.maximum(traffic, 0).astype(np.float32),
                "pollution": np.maximum(pollution, 0).astype(np.float32),
            },
            step_minutes=self.step_minutes,
            covariates=weather,
        )

    def _profile(self, i: int) -> SensorProfile:
        rng = np.random.default_rng([self.seed, _STREAM_PROFILE, i])
        kinds = list(ROAD_KINDS)
        kind = kinds[int(rng.integers(len(kinds)))]
        morning, evening, midday, weekend = ROAD_KINDS[kind]
        jitter = rng.uniform(0.85, 1.15, size=4)
        return SensorProfile(
            sensor_id=f"S{i:03d}",
            kind=kind,
            scale=float(np.exp(rng.uniform(np.log(250), np.log(2000)))),
            phase_hours=float(rng.uniform(-0.75, 0.75)),
            morning_peak=morning * float(jitter[0]),
            evening_peak=evening * float(jitter[1]),
            midday=midday * float(jitter[2]),
            weekend_level=weekend * float(jitter[3]),
            rain_sensitivity=float(rng.uniform(-0.25, 0.15)),
            emission=float(rng.uniform(25, 50)),
            background=float(rng.uniform(8, 18)),
        )


def _hour_of_day(timestamps: np.ndarray) -> np.ndarray:
    minutes = (timestamps - timestamps.astype("datetime64[D]")).astype("timedelta64[m]").astype(np.int64)
    return minutes / 60.0


def _day_of_week(timestamps: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday; Monday = 0.
    return (timestamps.astype("datetime64[D]").astype(np.int64) + 3) % 7


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((hours - centre) / width) ** 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _daily_shape(p: SensorProfile, hours: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    h = (hours - p.phase_hours) % 24
    friday = weekday == 4
    workday = (
        0.06
        + 0.30 * _sigmoid((h - 6.0) / 0.6) * _sigmoid((21.5 - h) / 1.0)
        + p.morning_peak * _bump(h, 8.0, 0.9)
        + p.evening_peak * np.where(friday, 1.1, 1.0) * _bump(h, 17.5, 1.2)
        + p.midday * _bump(h, 13.0, 2.5)
    )
    weekend = (
        0.06
        + 0.30 * _sigmoid((h - 8.0) / 1.0) * _sigmoid((23.0 - h) / 1.0)
        + 0.9 * p.weekend_level * _bump(h, 13.5, 3.0)
    )
    return np.where(weekday >= 5, weekend, workday) * _WEEKDAY_FACTOR[weekday]


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    shocks = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    out[0] = shocks[0] / np.sqrt(max(1 - phi**2, 1e-6))  # start in the stationary distribution
    for t in range(1, n):
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def _exponential_memory(x: np.ndarray, rho: float) -> np.ndarray:
    out = np.empty_like(x)
    out[0] = x[0]
    for t in range(1, len(x)):
        out[t] = rho * out[t - 1] + (1 - rho) * x[t]
    return out


def _incidents(rng: np.random.Generator, n: int, step_h: float) -> np.ndarray:
    factor = np.ones(n)
    starts = np.flatnonzero(rng.random(n) < 0.003 * step_h)  # about one every two weeks
    for start in starts:
        length = max(1, round(float(rng.uniform(1, 3)) / step_h))
        factor[start : start + length] = rng.uniform(0.4, 0.7)
    return factor


def _regional_background(seed: int, n: int, step_h: float) -> np.ndarray:
    rng = np.random.default_rng([seed, _STREAM_WEATHER, 1])
    return 8 + 4 * np.tanh(_ar1(rng, n, phi=0.985**step_h, sigma=0.15 * np.sqrt(step_h)))
