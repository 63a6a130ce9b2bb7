"""Aggregation strategies: ``get_strategy(name)`` for the configured rule."""

from __future__ import annotations

from qflare.errors import ConfigError
from qflare.fl.strategies.base import Strategy
from qflare.fl.strategies.fedavg import FedAvg

__all__ = ["STRATEGIES", "FedAvg", "Strategy", "get_strategy"]

STRATEGIES: dict[str, type[Strategy]] = {FedAvg.name: FedAvg}


def get_strategy(name: str) -> Strategy:
    """The strategy registered under ``name`` with its default settings."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown aggregation strategy {name!r}; known: {sorted(STRATEGIES)}", reason="unknown_strategy"
        ) from None
