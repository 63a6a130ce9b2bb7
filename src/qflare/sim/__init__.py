"""Simulation: a real server and N edge nodes as separate processes on 127.0.0.1."""

from qflare.sim.runner import SimulationConfig, run_simulation

__all__ = ["SimulationConfig", "run_simulation"]
