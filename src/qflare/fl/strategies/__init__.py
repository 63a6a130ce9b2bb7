"""Aggregation strategies: ``get_strategy(name, **params)`` for the configured rule."""

from __future__ import annotations

from typing import Any

from qflare.errors import ConfigError
from qflare.fl.strategies.base import Strategy
from qflare.fl.strategies.fedavg import FedAvg
from qflare.fl.strategies.fltrust import FLTrust
from qflare.fl.strategies.robust import ROBUST_STRATEGIES, BoundedFedAvg
from qflare.fl.strategies.server_opt import SERVER_OPT_STRATEGIES, FedAdagrad, FedAdam, FedAvgM, FedYogi

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "BoundedFedAvg",
    "FLTrust",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Strategy",
    "get_strategy",
]

STRATEGIES: dict[str, type[Strategy]] = {
    FedAvg.name: FedAvg,
    **{s.name: s for s in ROBUST_STRATEGIES},
    FLTrust.name: FLTrust,
    **{s.name: s for s in SERVER_OPT_STRATEGIES},
}
"""``aggregation.rule`` -> strategy class (FLTrust trains its root update on ``root_task``'s clean data)."""

DEFAULT_STRATEGY = BoundedFedAvg.name
"""The rule of the shipped configuration and ``qflare simulate``: FedAvg with bounded influence."""


def get_strategy(name: str, **params: Any) -> Strategy:
    """The strategy registered under ``name``, built with ``aggregation.params``.

    Raises
    ------
    ConfigError
        ``unknown_strategy``, or ``invalid_aggregation_params`` naming ``aggregation.<key>``.
    """
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown aggregation strategy {name!r}; known: {sorted(STRATEGIES)}", reason="unknown_strategy"
        ) from None
    cls.check_params(params)
    return cls(**params) if params else cls()
