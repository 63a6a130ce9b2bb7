"""In-process federated simulation on a virtual clock: synchronous rounds vs asynchronous FedBuff.

Every local training really runs (torch, one thread, one client after another); what is simulated is
*time*: a device with profile ``slowdown`` x takes ``x * base_train_seconds * (n_k / mean n)``
virtual seconds to train, plus its network delay each way, is online only during its duty cycle and
drops tasks at its drop-out rate (:mod:`qflare.sim.profiles`). Same seed, same profiles, same
decisions in both modes, so the wall time to a target accuracy compares the protocols, not the
machine's load.

- ``sync``: each round selects the online devices (``fraction`` of them), waits for all of them or
  ``deadline_seconds``, and aggregates the on-time updates with FedAvg (the server's default
  behaviour, ``close_on_quorum: false``).
- ``async``: :class:`~qflare.fl.asynchronous.FedBuffServer`; every device trains on the newest
  model whenever it is online and idle; the server publishes every ``buffer`` updates.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qflare.errors import ConfigError, QFlareError
from qflare.fl.aggregate import fedavg
from qflare.fl.asynchronous import AsyncConfig, FedBuffServer
from qflare.fl.simulation import client_seed
from qflare.fl.tasks import Task, get_task
from qflare.fl.train import TrainConfig, get_arrays, set_arrays, train_local
from qflare.sim.profiles import DeviceProfile, SimulatedDevice
from qflare.types import NDArrays

__all__ = ["TimedConfig", "TimedResult", "run_timed"]

Mode = Literal["sync", "async"]


@dataclass(frozen=True)
class TimedConfig:
    """One timed run. ``time_budget_seconds`` (virtual) ends it; so do ``max_trainings`` (local trainings,
    the host's compute) and ``stop_at_target``."""

    task: str = "digits"
    clients: int = 50
    mode: Mode = "sync"
    partition: str | None = None
    alpha: float = 0.5
    seed: int = 0
    target: float | None = None
    stop_at_target: bool = False
    time_budget_seconds: float = 600.0
    max_trainings: int | None = None  # host compute budget: stop after this many local trainings
    base_train_seconds: float = 1.0
    fraction: float = 1.0
    deadline_seconds: float | None = None  # sync; default 1.5 x the slowest device's nominal time
    async_config: AsyncConfig = field(default_factory=AsyncConfig)
    train: TrainConfig | None = None


@dataclass
class TimedResult:
    """What a timed run produced: the metric over virtual time and the per-device behaviour."""

    mode: Mode
    metric: str
    history: list[dict[str, float]]
    time_to_target_seconds: float | None
    final: dict[str, float]
    devices: list[dict[str, Any]]
    accepted_updates: int
    refused_updates: dict[str, int]
    host_seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode, f"final_{self.metric}": self.final.get(self.metric),
            "time_to_target_seconds": self.time_to_target_seconds,
            "simulated_seconds": self.history[-1]["time"] if self.history else 0.0,
            "models_published": len(self.history), "accepted_updates": self.accepted_updates,
            "refused_updates": dict(self.refused_updates), "host_seconds": round(self.host_seconds, 2),
            "devices": self.devices,
        }


def _reached(task: Task, value: float, target: float | None) -> bool:
    if target is None:
        return False
    return value >= target if task.metric == "accuracy" else value <= target


def run_timed(config: TimedConfig, profiles: list[DeviceProfile]) -> TimedResult:
    """Run ``config`` with one profile per client (``len(profiles) == config.clients``)."""
    if len(profiles) != config.clients:
        raise ConfigError(f"{len(profiles)} device profiles for {config.clients} clients", reason="invalid_config")
    if config.mode == "async":
        config.async_config.check(config.clients)
    elif config.mode != "sync":
        raise ConfigError(f"mode must be sync or async, got {config.mode!r}", reason="invalid_config")
    started = time.perf_counter()
    task = get_task(config.task)
    tc = config.train or task.default_train_config()
    if tc.dp is not None:  # as_kwargs() leaves dp out: never train without the DP the config asks for
        raise ConfigError("the timed in-process simulation does not run local DP (training.dp)",
                          reason="invalid_config")
    datasets = [task.client_dataset(k, config.clients, partition=config.partition, alpha=config.alpha,
                                    seed=config.seed) for k in range(config.clients)]
    sizes = np.asarray([len(d) for d in datasets], dtype=np.float64)  # type: ignore[arg-type]
    nominal = sizes * (config.base_train_seconds / float(sizes.mean()))
    test = task.test_dataset(seed=config.seed)
    model = task.build_model(config.seed)
    devices = [SimulatedDevice(p, seed=config.seed) for p in profiles]
    tasks_started = [0] * config.clients

    def train(k: int, base: NDArrays) -> tuple[NDArrays, int]:
        tasks_started[k] += 1
        set_arrays(model, base)
        result = train_local(model, datasets[k], **tc.as_kwargs(), seed=client_seed(config.seed, tasks_started[k], k))
        return get_arrays(model), result.num_examples

    def evaluate(arrays: NDArrays) -> dict[str, float]:
        set_arrays(model, arrays)
        return task.evaluate(model, test)

    initial = get_arrays(task.build_model(config.seed))
    history: list[dict[str, float]] = []
    hit: list[float] = []

    def record(t: float, version: int, arrays: NDArrays) -> bool:
        m = evaluate(arrays)
        history.append({"time": round(t, 3), "version": version, **m})
        if not hit and _reached(task, m[task.metric], config.target):
            hit.append(t)
        over = config.max_trainings is not None and sum(tasks_started) >= config.max_trainings
        return over or (bool(hit) and config.stop_at_target)

    if config.mode == "sync":
        accepted, refused = _run_sync(config, devices, nominal, initial, train, record)
    else:
        accepted, refused = _run_async(config, devices, nominal, initial, train, record)
    return TimedResult(
        mode=config.mode, metric=task.metric, history=history, time_to_target_seconds=hit[0] if hit else None,
        final=history[-1] if history else {}, devices=[d.report() for d in devices], accepted_updates=accepted,
        refused_updates=refused, host_seconds=time.perf_counter() - started,
    )


def _run_sync(config: TimedConfig, devices: list[SimulatedDevice], nominal: np.ndarray, initial: NDArrays,
              train: Any, record: Any) -> tuple[int, dict[str, int]]:
    slowest = max(d.training_seconds(float(n)) + 2 * d.profile.network_delay_seconds
                  for d, n in zip(devices, nominal, strict=True))
    deadline = config.deadline_seconds or 1.5 * slowest
    rng = random.Random(f"sync:{config.seed}")
    t, version, accepted = 0.0, 0, 0
    refused: dict[str, int] = {}
    global_arrays = initial
    while t < config.time_budget_seconds:
        online = [k for k, d in enumerate(devices) if d.seconds_until_online(t) == 0]
        if not online:
            t += min(d.seconds_until_online(t) for d in devices)
            continue
        n_sel = max(1, round(config.fraction * len(online)))
        selected = sorted(rng.sample(online, n_sel))
        results: list[tuple[NDArrays, int]] = []
        finish = []
        all_in = True
        for k in selected:
            d = devices[k]
            outcome = d.next_outcome()
            took = d.training_seconds(float(nominal[k])) + 2 * d.profile.network_delay_seconds
            d.extra_seconds += took - float(nominal[k])
            if outcome != "complete":
                all_in = False
                continue
            if took > deadline:
                all_in = False
                refused["deadline_passed"] = refused.get("deadline_passed", 0) + 1
                continue
            results.append(train(k, global_arrays))
            finish.append(took)
        t += max(finish) if all_in and finish else deadline
        if not results:
            refused["round_failed_no_updates"] = refused.get("round_failed_no_updates", 0) + 1
            continue
        global_arrays = fedavg(results)
        accepted += len(results)
        version += 1
        if record(t, version, global_arrays):
            break
    return accepted, refused


def _run_async(config: TimedConfig, devices: list[SimulatedDevice], nominal: np.ndarray, initial: NDArrays,
               train: Any, record: Any) -> tuple[int, dict[str, int]]:
    server = FedBuffServer(initial=initial, config=config.async_config)
    stop: list[bool] = []
    # (finish time, device, base version, outcome, update or None)
    events: list[tuple[float, int, int, str, tuple[NDArrays, int] | None]] = []

    def start(k: int, now: float) -> None:
        d = devices[k]
        wait = d.seconds_until_online(now)
        d.offline_seconds += wait
        begin = now + wait
        outcome = d.next_outcome()
        took = d.training_seconds(float(nominal[k])) + 2 * d.profile.network_delay_seconds
        d.extra_seconds += took - float(nominal[k])
        base = server.version
        update = train(k, server.model()) if outcome == "complete" else None
        # A drop mid-training wastes half the time on average; mid-upload the whole of it.
        end = begin + (took / 2 if outcome == "drop_training" else took)
        heapq.heappush(events, (end, k, base, outcome, update))

    for k in range(len(devices)):
        start(k, 0.0)
    while events and not stop:
        now, k, base, outcome, update = heapq.heappop(events)
        if now > config.time_budget_seconds:
            break
        if update is not None:
            try:
                rec = server.submit(f"device_{k}", base, update[0], update[1])
            except QFlareError:
                pass  # counted in server.refused; the device simply fetches the newest model
            else:
                if rec.published is not None and record(now, rec.published, server.model()):
                    stop.append(True)
        start(k, now)
    return len(server.accepted), dict(server.refused)
