"""Server optimizers as strategies: FedAvgM, FedAdagrad, FedAdam, FedYogi over any base rule.

A :class:`ServerOptStrategy` wraps a base strategy (FedAvg by default, or any robust rule): the base
aggregates the round's updates, and the optimizer of :mod:`qflare.fl.optimizers` (papers cited
there) takes a step from the round's base model along ``aggregate - base``. The optimizer state
(momentum, second moments) lives in the strategy between rounds; :meth:`ServerOptStrategy.state` /
:meth:`ServerOptStrategy.from_state` turn it into arrays for a checkpoint, and each round's
accumulator carries the state it started from in its own :meth:`~qflare.fl.aggregate.Accumulator.state`,
so a sealed in-round checkpoint reproduces the same step.

Config: ``aggregation.rule: fedadam`` with ``aggregation.params`` holding the optimizer's parameters
(``eta``, ``beta1``, ...), ``base`` (a rule name, default ``fedavg``) and the base rule's parameters
prefixed ``base.`` (e.g. ``{base: krum, base.f: 2, eta: 0.05}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import Accumulator, AccumulatorState
from qflare.fl.optimizers import SERVER_OPTIMIZERS, OptimizerState, make_params
from qflare.fl.robust import RuleOutcome
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies.base import Strategy
from qflare.types import NDArrays

__all__ = ["FedAdagrad", "FedAdam", "FedAvgM", "FedYogi", "SERVER_OPT_STRATEGIES", "ServerOptStrategy"]

_BASE = "base"
_BASE_PREFIX = "base."
_OPT_PREFIX = "opt/"
_ACC_PREFIX = "acc/"


def _split(params: Mapping[str, object]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    base = params.get(_BASE, "fedavg")
    if not isinstance(base, str):
        raise ConfigError(f"aggregation.base: must be a rule name, got {base!r}", reason="invalid_aggregation_params")
    base_params = {k[len(_BASE_PREFIX):]: v for k, v in params.items() if k.startswith(_BASE_PREFIX)}
    opt = {k: v for k, v in params.items() if k != _BASE and not k.startswith(_BASE_PREFIX)}
    return base, base_params, opt


def _base_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    from qflare.fl.strategies import STRATEGIES

    cls = STRATEGIES.get(name)
    if cls is None or issubclass(cls, ServerOptStrategy):
        raise ConfigError(f"aggregation.base: {name!r} is not a base aggregation rule",
                          reason="invalid_aggregation_params")
    cls.check_params(params)
    return cls(**params) if params else cls()


class ServerOptStrategy(Strategy):
    """A base rule followed by a server optimizer step.

    Parameters
    ----------
    base:
        The base strategy (an instance), or its registered name; default FedAvg.
    **params:
        The optimizer's parameters (see :func:`qflare.fl.optimizers.make_params`), plus, when
        ``base`` is a name, ``base.<key>`` parameters for it.

    Raises
    ------
    ConfigError
        An unknown base rule or a bad parameter, naming ``aggregation.<key>``.
    """

    optimizer: ClassVar[str]
    needs_reference = True

    def __init__(self, base: Strategy | str = "fedavg", **params: Any) -> None:
        if isinstance(base, Strategy):
            self.base = base
            opt = params
        else:
            name, base_params, opt = _split({**params, _BASE: base})
            self.base = _base_strategy(name, base_params)
        self.params = make_params(self.optimizer, opt, prefix="aggregation")
        self._state: OptimizerState | None = None

    @classmethod
    def check_params(cls, params: Mapping[str, object]) -> None:
        """The base rule and its ``base.`` parameters, and the optimizer's parameters."""
        name, base_params, opt = _split(params)
        _base_strategy(name, base_params)
        make_params(cls.optimizer, opt, prefix="aggregation")

    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        """Not available without the base model: use :meth:`accumulator` with ``reference``."""
        raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """The base rule's accumulator; :meth:`~Accumulator.result` applies the optimizer step."""
        if reference is None:
            raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")
        inner = self.base.accumulator(spec, reference=reference)
        return _ServerOptAccumulator(spec, inner, self, reference, self._state)

    def state(self) -> NDArrays:
        """The optimizer state as arrays (empty before the first step), for checkpoints."""
        return self._state.to_arrays() if self._state is not None else {}

    def from_state(self, arrays: Mapping[str, np.ndarray]) -> ServerOptStrategy:
        """Load what :meth:`state` returned; returns ``self``."""
        self._state = OptimizerState.from_arrays(arrays, kind=self.optimizer) if arrays else None
        return self

    def _step(self, reference: NDArrays, aggregate: NDArrays, start: OptimizerState | None) -> NDArrays:
        new, state = SERVER_OPTIMIZERS[self.optimizer].step(reference, aggregate, start, self.params)
        self._state = state
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self.base!r}, {self.params})"


class _ServerOptAccumulator(Accumulator):
    """Delegates to the base rule's accumulator; the optimizer steps from the state the round began with,
    so calling :meth:`result` again gives the same model."""

    def __init__(self, spec: ModelSpec, inner: Accumulator, strategy: ServerOptStrategy, reference: NDArrays,
                 start: OptimizerState | None) -> None:
        super().__init__(spec)
        self._inner = inner
        self._strategy = strategy
        self._reference = reference
        self._start = start

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        self._inner.add(arrays, num_examples)

    def _result(self) -> NDArrays:
        aggregate = self._inner.result()
        self.last_outcome: RuleOutcome | None = self._inner.last_outcome
        return self._strategy._step(self._reference, aggregate, self._start)

    def _export(self) -> tuple[NDArrays, tuple[int, ...]]:
        inner = self._inner.state()
        arrays = {f"{_ACC_PREFIX}{k}": v for k, v in inner.arrays.items()}
        if self._start is not None:
            arrays.update({f"{_OPT_PREFIX}{k}": v for k, v in self._start.to_arrays().items()})
        return arrays, inner.weights

    def _import(self, state: AccumulatorState) -> None:
        inner = {k[len(_ACC_PREFIX):]: v for k, v in state.arrays.items() if k.startswith(_ACC_PREFIX)}
        opt = {k[len(_OPT_PREFIX):]: v for k, v in state.arrays.items() if k.startswith(_OPT_PREFIX)}
        if len(inner) + len(opt) != len(state.arrays):
            raise AggregationError("accumulator state has unknown entries", reason="bad_accumulator_state")
        self._inner.from_state(AccumulatorState(state.count, state.total_examples, inner, state.weights))
        self._start = OptimizerState.from_arrays(opt, kind=self._strategy.optimizer) if opt else None


class FedAvgM(ServerOptStrategy):
    """Server momentum (Hsu, Qi & Brown 2019): params ``lr`` (1.0), ``momentum`` (0.9)."""

    name = optimizer = "fedavgm"


class FedAdagrad(ServerOptStrategy):
    """FedAdagrad (Reddi et al., ICLR 2021): params ``eta``, ``eta_l``, ``beta1``, ``tau``."""

    name = optimizer = "fedadagrad"


class FedAdam(ServerOptStrategy):
    """FedAdam (Reddi et al., ICLR 2021): params ``eta`` (0.1), ``beta1`` (0.9), ``beta2`` (0.99), ``tau`` (1e-3)."""

    name = optimizer = "fedadam"


class FedYogi(ServerOptStrategy):
    """FedYogi (Reddi et al., ICLR 2021): params as FedAdam."""

    name = optimizer = "fedyogi"


SERVER_OPT_STRATEGIES: tuple[type[ServerOptStrategy], ...] = (FedAvgM, FedAdagrad, FedAdam, FedYogi)
"""Registered in :data:`qflare.fl.strategies.STRATEGIES`."""
