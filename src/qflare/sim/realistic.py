"""Realistic devices in ``qflare simulate``: device profiles applied to the real edge-node loop.

:func:`attach_simulation` is the simulation-only hook: it wraps a virtual device's
``EdgeNode.train_round`` and ``EdgeNode._send_update`` (in :mod:`qflare.sim.fleet`, the process that
hosts virtual devices) with the sleep/skip decisions of its :class:`~qflare.sim.profiles.SimulatedDevice`:

- offline (outside its duty cycle): sleep until the next online window, then train;
- slowdown x: after training, sleep ``(x - 1) x`` the measured training time (the time in the hosting
  process's training slot, not the wait for it; slept outside the slot, so a slow device does not hold
  the host's CPU);
- network delay: slept before each upload;
- drop-out mid-training or mid-upload: nothing is sent; the node sees a
  :class:`SimulatedDropout` (a ``Conflict``, which the node loop logs and counts as a refused update
  with reason ``simulated_dropout_training`` / ``simulated_dropout_upload``) after the device stayed
  away until the round's deadline (at most ``max_away_seconds``).

Everything else is the real protocol: the same keys, envelopes, signatures and audit checks.
The devices find their profiles through ``QFLARE_SIM_DEVICE_PROFILES`` (a JSON file written by
:func:`run_realistic_simulation`) and leave their counts in ``devices/<id>.sim.json``, which the run
summary gathers under ``devices``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from qflare.environment import SIM_DEVICE_PROFILES_ENV, environment
from qflare.errors import Conflict
from qflare.sim.profiles import DeviceProfile, SimulatedDevice, profiles_from_json, profiles_to_json

__all__ = ["PROFILES_ENV", "SimulatedDropout", "attach_simulation", "run_realistic_simulation",
           "simulated_device_for"]

PROFILES_ENV = SIM_DEVICE_PROFILES_ENV


class SimulatedDropout(Conflict):
    """A simulated device abandoned its task (never raised outside a simulation)."""

    default_reason = "simulated_dropout"


def simulated_device_for(device_id: str, *, seed: int = 0) -> SimulatedDevice | None:
    """The device's simulated behaviour, if this process runs under ``QFLARE_SIM_DEVICE_PROFILES``."""
    path = environment().sim_device_profiles
    if not path:
        return None
    for profile in profiles_from_json(json.loads(Path(path).read_text())):
        if profile.device_id == device_id:
            return SimulatedDevice(profile, seed=seed)
    return None


def attach_simulation(node: Any, device: SimulatedDevice, *, sleep: Callable[[float], None] | None = None,
                      clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                      max_away_seconds: float = 30.0, on_task: Callable[[], None] | None = None,
                      slot: AbstractContextManager[Any] | None = None) -> None:
    """SIMULATION ONLY: make ``node`` (an ``EdgeNode``) behave as ``device`` says.

    ``on_task`` runs after every task (e.g. to write the device's report: the simulation driver may stop
    the process as soon as the run is complete, before the node returns). ``slot``: the hosting process's
    training slot (:class:`qflare.sim.fleet.FairGate`); the device trains inside it, and the slowdown
    multiplies the time inside only (not the wait for it), slept after leaving it.
    """
    sleep = sleep or node.sleep
    assert sleep is not None
    start = clock()
    train_round: Callable[[dict[str, Any]], bytes | None] = node.train_round
    send_update: Callable[[int, bytes], dict[str, Any] | None] = node._send_update
    pending: dict[int, tuple[str, float]] = {}  # round_id -> (outcome, the task's deadline)

    def away(deadline_at: float) -> None:
        wait = max(0.0, min(max_away_seconds, deadline_at - wall()))
        device.extra_seconds += wait
        sleep(wait)

    def simulated_train_round(task: dict[str, Any]) -> bytes | None:
        offline = device.seconds_until_online(clock() - start)
        if offline > 0:
            device.offline_seconds += offline
            sleep(offline)
        outcome = device.next_outcome()
        with slot if slot is not None else contextlib.nullcontext():
            tic = clock()
            update = train_round(task)
            took = clock() - tic
        extra = device.training_seconds(took) - took
        if outcome == "drop_training":
            extra /= 2  # on average half-way through
        device.extra_seconds += max(0.0, extra)
        sleep(max(0.0, extra))
        pending[int(task["round_id"])] = (outcome, float(task.get("deadline_at") or 0.0))
        return update

    def simulated_send_update(round_id: int, update: bytes) -> dict[str, Any] | None:
        try:
            return send_or_drop(round_id, update)
        finally:
            if on_task is not None:
                on_task()

    def send_or_drop(round_id: int, update: bytes) -> dict[str, Any] | None:
        outcome, deadline_at = pending.pop(round_id, ("complete", 0.0))
        if outcome == "drop_training":
            away(deadline_at)
            raise SimulatedDropout(f"simulated drop-out during training of round {round_id}",
                                   reason="simulated_dropout_training")
        delay = device.profile.network_delay_seconds
        device.extra_seconds += delay
        sleep(delay)
        if outcome == "drop_upload":
            away(deadline_at)
            raise SimulatedDropout(f"simulated drop-out during the upload of round {round_id}",
                                   reason="simulated_dropout_upload")
        return send_update(round_id, update)

    node.train_round = simulated_train_round
    node._send_update = simulated_send_update


def write_device_report(device: SimulatedDevice, path: Path) -> None:
    path.write_text(json.dumps(device.report(), sort_keys=True) + "\n")


def run_realistic_simulation(sim: Any, profiles: list[DeviceProfile], *, on_progress: Any = None) -> dict[str, Any]:
    """``run_simulation(sim)`` with these device profiles (one per device, in order ``edge_01`` ...).

    The devices run as virtual devices (:mod:`qflare.sim.fleet`, at least two per process), which is
    where the profiles are applied; the summary gains ``devices`` (profile and counts per device).
    """
    from qflare.sim.report import write_summary
    from qflare.sim.runner import new_run_dir, run_simulation

    if len(profiles) != sim.clients:
        from qflare.errors import ConfigError

        raise ConfigError(f"{len(profiles)} device profiles for {sim.clients} devices", reason="bad_device_profile")
    ids = [f"edge_{i + 1:02d}" for i in range(sim.clients)]
    named = [dataclasses.replace(p, device_id=d) for p, d in zip(profiles, ids, strict=True)]
    holder = new_run_dir(Path(sim.runs_dir) / "profiles")
    profile_file = holder / "device_profiles.json"
    profile_file.write_text(json.dumps(profiles_to_json(named), indent=1) + "\n")
    per_process = sim.devices_per_process if (sim.devices_per_process or 0) >= 2 else max(2, math.ceil(sim.clients / 2))
    sim = dataclasses.replace(sim, devices_per_process=per_process,
                              extra_env={**sim.extra_env, PROFILES_ENV: str(profile_file.resolve())})
    summary = run_simulation(sim, on_progress=on_progress)
    run_dir = Path(summary["run_dir"])
    devices = []
    for d in ids:
        report = run_dir / "devices" / f"{d}.sim.json"
        devices.append({"device_id": d, **(json.loads(report.read_text()) if report.exists() else {})})
    summary["devices"] = devices
    (run_dir / "device_profiles.json").write_text(profile_file.read_text())
    write_summary(summary, run_dir / "summary.json")
    return summary
