"""Simulation: a real server and N edge nodes as separate processes on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qflare.sim.runner import SimulationConfig, run_simulation

__all__ = ["SimulationConfig", "run_simulation"]


def __getattr__(name: str) -> Any:
    # Lazy: ``qflare simulate`` checks its options against qflare.sim.attacks before torch is imported.
    if name in __all__:
        from qflare.sim import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'qflare.sim' has no attribute {name!r}")
