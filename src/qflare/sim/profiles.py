"""Realistic device behaviour for simulations: speed, availability, drop-outs and network delay.

A :class:`DeviceProfile` describes one simulated device; :func:`generate_profiles` draws a fleet
(``--slow-fraction F --slowdown X --dropout P``, optionally lognormal speed spread) and
:func:`load_profiles` reads a CSV of them (``--device-profiles FILE``). :class:`SimulatedDevice`
turns a profile into the sleep/skip decisions of one device: the edge node asks it (its
``simulation`` hook, :mod:`qflare.edge.node`) and the in-process timed simulation
(:mod:`qflare.fl.timed`) uses the same decisions on a virtual clock. Nothing here runs in a
deployed device: the hook is ``None`` unless a simulation sets it.

CSV columns (header required; only ``device_id`` may be omitted, then rows map to devices in
order)::

    device_id,slowdown,duty_cycle,dropout,network_delay_seconds
    edge_01,1.0,1.0,0.0,0.05
    edge_02,10.0,0.5,0.2,0.3
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qflare.errors import ConfigError

__all__ = [
    "PROFILE_COLUMNS",
    "DeviceProfile",
    "Outcome",
    "SimulatedDevice",
    "generate_profiles",
    "load_profiles",
    "profiles_from_json",
    "profiles_to_json",
]

PROFILE_COLUMNS = ("device_id", "slowdown", "duty_cycle", "dropout", "network_delay_seconds")

Outcome = Literal["complete", "drop_training", "drop_upload"]


@dataclass(frozen=True)
class DeviceProfile:
    """How one simulated device behaves.

    Parameters
    ----------
    device_id:
        The device it applies to (``""``: assigned by position).
    slowdown:
        Local training takes this many times as long as on the simulation host (>= 1 is slower).
    duty_cycle:
        Fraction of each ``period_seconds`` the device is online, in (0, 1]; its online window
        starts at a per-device phase.
    dropout:
        Probability that a task is abandoned: half of the drop-outs happen mid-training, half
        mid-upload (after the training time was spent).
    network_delay_seconds:
        One-way delay added to each model download and each upload.
    period_seconds:
        Length of one availability cycle.
    """

    device_id: str = ""
    slowdown: float = 1.0
    duty_cycle: float = 1.0
    dropout: float = 0.0
    network_delay_seconds: float = 0.0
    period_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(f"device profile {self.device_id or '(unnamed)'}: {'; '.join(problems)}",
                              reason="bad_device_profile")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _problems(p: DeviceProfile) -> list[str]:
    out = []
    if not (math.isfinite(p.slowdown) and p.slowdown > 0):
        out.append(f"slowdown must be > 0, got {p.slowdown}")
    if not (0 < p.duty_cycle <= 1):
        out.append(f"duty_cycle must be in (0, 1], got {p.duty_cycle}")
    if not (0 <= p.dropout < 1):
        out.append(f"dropout must be in [0, 1), got {p.dropout}")
    if not (math.isfinite(p.network_delay_seconds) and p.network_delay_seconds >= 0):
        out.append(f"network_delay_seconds must be >= 0, got {p.network_delay_seconds}")
    if not (math.isfinite(p.period_seconds) and p.period_seconds > 0):
        out.append(f"period_seconds must be > 0, got {p.period_seconds}")
    return out


def generate_profiles(
    device_ids: Sequence[str],
    *,
    slow_fraction: float = 0.0,
    slowdown: float = 10.0,
    dropout: float = 0.0,
    dropout_fraction: float = 1.0,
    speed_sigma: float = 0.0,
    duty_cycle: float = 1.0,
    network_delay_seconds: float = 0.0,
    seed: int = 0,
) -> list[DeviceProfile]:
    """Profiles for ``device_ids``: ``round(slow_fraction * n)`` devices (chosen from ``seed``) are
    ``slowdown`` times slower; ``dropout_fraction`` of the devices drop a task with probability
    ``dropout``; with ``speed_sigma > 0`` every device's speed is also multiplied by a lognormal
    factor ``exp(N(0, sigma))`` (at least 1: nobody is faster than the host)."""
    if not 0 <= slow_fraction <= 1 or not 0 <= dropout_fraction <= 1:
        raise ConfigError("slow_fraction and dropout_fraction must be in [0, 1]", reason="bad_device_profile")
    rng = random.Random(f"profiles:{seed}")
    n = len(device_ids)
    slow = set(rng.sample(range(n), round(slow_fraction * n)))
    dropping = set(rng.sample(range(n), round(dropout_fraction * n)))
    out = []
    for i, device_id in enumerate(device_ids):
        factor = max(1.0, math.exp(rng.gauss(0.0, speed_sigma))) if speed_sigma > 0 else 1.0
        out.append(DeviceProfile(
            device_id=device_id, slowdown=factor * (slowdown if i in slow else 1.0), duty_cycle=duty_cycle,
            dropout=dropout if i in dropping else 0.0, network_delay_seconds=network_delay_seconds,
        ))
    return out


def load_profiles(path: str | Path, device_ids: Sequence[str]) -> list[DeviceProfile]:
    """Read a device-profile CSV and return one profile per device in ``device_ids``.

    Rows with a ``device_id`` apply to that device (an unknown id is an error); without the column,
    row *i* applies to device *i*. A device the file does not mention keeps the default profile.
    Any bad cell raises ``ConfigError(reason="bad_device_profile")`` naming the file, line and column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the device profiles ({exc.strerror})", reason="bad_device_profile") \
            from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise ConfigError(f"{path}: empty file; expected a header {','.join(PROFILE_COLUMNS)}",
                          reason="bad_device_profile")
    unknown = [h for h in header if h not in PROFILE_COLUMNS and h != "period_seconds"]
    if unknown:
        raise ConfigError(f"{path}, line 1: unknown column(s) {', '.join(unknown)}; known: "
                          f"{', '.join((*PROFILE_COLUMNS, 'period_seconds'))}", reason="bad_device_profile")
    known = set(device_ids)
    by_id: dict[str, DeviceProfile] = {}
    for index, row in enumerate(reader):
        line = index + 2
        cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise ConfigError(f"{path}, line {line}: more cells than header columns", reason="bad_device_profile")
        values: dict[str, Any] = {}
        for column, raw in cells.items():
            if column == "device_id":
                continue
            if raw == "":
                raise ConfigError(f"{path}, line {line}, column {column}: empty", reason="bad_device_profile")
            try:
                values[column] = float(raw)
            except ValueError:
                raise ConfigError(f"{path}, line {line}, column {column}: {raw!r} is not a number",
                                  reason="bad_device_profile") from None
        if "device_id" in cells:
            device_id = cells["device_id"]
            if device_id not in known:
                raise ConfigError(f"{path}, line {line}, column device_id: unknown device {device_id!r}",
                                  reason="bad_device_profile")
        else:
            if index >= len(device_ids):
                raise ConfigError(f"{path}, line {line}: more rows than the {len(device_ids)} devices",
                                  reason="bad_device_profile")
            device_id = device_ids[index]
        if device_id in by_id:
            raise ConfigError(f"{path}, line {line}: a second row for device {device_id!r}",
                              reason="bad_device_profile")
        try:
            by_id[device_id] = DeviceProfile(device_id=device_id, **values)
        except ConfigError as exc:
            raise ConfigError(f"{path}, line {line}: {exc.message}", reason="bad_device_profile") from None
    return [by_id.get(d, DeviceProfile(device_id=d)) for d in device_ids]


def profiles_to_json(profiles: Sequence[DeviceProfile]) -> list[dict[str, Any]]:
    return [p.as_dict() for p in profiles]


def profiles_from_json(rows: Sequence[dict[str, Any]]) -> list[DeviceProfile]:
    return [DeviceProfile(**row) for row in rows]


class SimulatedDevice:
    """One device's simulated behaviour: when it is online, how long it trains, whether it drops out.

    Deterministic for ``(profile.device_id, seed)``. ``clock`` values are seconds on any clock that
    starts near 0 for the run (the virtual clock of :mod:`qflare.fl.timed`, or monotonic time since
    the device started).
    """

    def __init__(self, profile: DeviceProfile, *, seed: int = 0) -> None:
        self.profile = profile
        self._rng = random.Random(f"device:{profile.device_id}:{seed}")
        self.phase = self._rng.random() * profile.period_seconds
        self.tasks = 0
        self.dropped_training = 0
        self.dropped_upload = 0
        self.completed = 0
        self.offline_seconds = 0.0
        self.extra_seconds = 0.0

    def seconds_until_online(self, now: float) -> float:
        """0 when online at ``now``, else how long until its next online window opens."""
        p = self.profile
        if p.duty_cycle >= 1:
            return 0.0
        pos = (now + self.phase) % p.period_seconds
        on = p.duty_cycle * p.period_seconds
        return 0.0 if pos < on else p.period_seconds - pos

    def training_seconds(self, compute_seconds: float) -> float:
        """How long local training takes on this device, given the host's ``compute_seconds``."""
        return compute_seconds * self.profile.slowdown

    def next_outcome(self) -> Outcome:
        """Decide the fate of the next task (call once per task)."""
        self.tasks += 1
        u = self._rng.random()
        if u < self.profile.dropout / 2:
            self.dropped_training += 1
            return "drop_training"
        if u < self.profile.dropout:
            self.dropped_upload += 1
            return "drop_upload"
        self.completed += 1
        return "complete"

    def report(self) -> dict[str, Any]:
        """The per-device line of the run summary."""
        return {
            **self.profile.as_dict(), "tasks": self.tasks, "completed": self.completed,
            "dropped_training": self.dropped_training, "dropped_upload": self.dropped_upload,
            "offline_seconds": round(self.offline_seconds, 3), "simulated_delay_seconds": round(self.extra_seconds, 3),
        }
