"""``qflare simulate`` options for a city fleet (issue 15): device profiles, async mode, personalisation.

- ``--device-profiles FILE`` or ``--slow-fraction/--slowdown/--dropout/--network-delay/--duty-cycle``:
  the real HTTP simulation with simulated device behaviour (:mod:`qflare.sim.realistic`).
- ``--mode async --buffer K``: asynchronous FedBuff, over HTTP (``rounds.mode: async``); with
  ``--in-process`` the virtual-clock simulation (:mod:`qflare.sim.timed`) instead.
- ``--personalize finetune|fedper|ditto``: over HTTP every device reports its own held-out metric; with
  ``--in-process`` the in-process personalised run (:mod:`qflare.fl.personalize`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qflare.errors import ConfigError

__all__ = ["build_profiles", "run_async_inprocess", "run_personalize_inprocess"]


def build_profiles(clients: int, seed: int, *, device_profiles: Path | None, slow_fraction: float, slowdown: float,
                   dropout: float, network_delay: float, duty_cycle: float) -> list[Any] | None:
    """The run's device profiles, or ``None`` when no option asks for them (bad file: ``ConfigError``)."""
    from qflare.sim.profiles import generate_profiles, load_profiles

    ids = [f"edge_{i + 1:02d}" for i in range(clients)]
    generated = (slow_fraction, dropout, network_delay, duty_cycle) != (0.0, 0.0, 0.0, 1.0)
    if device_profiles is not None:
        if generated:
            raise ConfigError("--device-profiles: give either a file or --slow-fraction/--dropout/...",
                              reason="bad_option")
        return load_profiles(device_profiles, ids)
    if not generated:
        return None
    return generate_profiles(ids, slow_fraction=slow_fraction, slowdown=slowdown, dropout=dropout,
                             network_delay_seconds=network_delay, duty_cycle=duty_cycle, seed=seed)


def run_async_inprocess(*, task: str, clients: int, partition: str | None, alpha: float, seed: int,
                        profiles: list[Any] | None, buffer: int, max_staleness: int, target: float | None,
                        train: Any, max_trainings: int) -> dict[str, Any]:
    from qflare.fl.asynchronous import AsyncConfig
    from qflare.sim.profiles import generate_profiles
    from qflare.sim.timed import TimedConfig, run_timed

    profiles = profiles or generate_profiles([f"edge_{i + 1:02d}" for i in range(clients)])
    cfg = TimedConfig(task=task, clients=clients, mode="async", partition=partition, alpha=alpha, seed=seed,
                      target=target, time_budget_seconds=1e9, max_trainings=max_trainings,
                      async_config=AsyncConfig(buffer=buffer, max_staleness=max_staleness, server_lr=0.5),
                      train=train)
    result = run_timed(cfg, profiles)
    return {"transport": "in-process (virtual clock)", "task": task, "clients": clients, **result.summary()}


def run_personalize_inprocess(*, task: str, clients: int, rounds: int, partition: str | None, alpha: float,
                              seed: int, method: str, finetune_epochs: int | None = None) -> dict[str, Any]:
    from qflare.fl.personalize import run_personalized

    s = run_personalized(task, clients, rounds, method=method, partition=partition, alpha=alpha, seed=seed,
                         finetune_epochs=finetune_epochs).summary()
    return {"transport": "in-process", "task": task, "clients": clients, "rounds": rounds, **s}
