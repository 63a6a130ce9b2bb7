"""Aggregation rules as pure functions over :data:`~qflare.types.NDArrays`, plus accumulators.

The pure functions (``fedavg`` here; robust rules such as Krum, trimmed mean and median go next
to it) take every client result at once, like Flower's ``aggregate.py``. An :class:`Accumulator`
takes them one at a time as they arrive: :class:`FedAvgAccumulator` keeps a single float64
running weighted sum, so an enclave holds O(model) memory however many clients report, and rules
that need all updates at once run through :class:`BufferedAccumulator`.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from qflare.errors import AggregationError, UpdateRejected
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = [
    "Accumulator",
    "AggregateFn",
    "BufferedAccumulator",
    "FedAvgAccumulator",
    "fedavg",
]

AggregateFn = Callable[[Sequence[tuple[NDArrays, int]]], NDArrays]
"""A pure aggregation rule: ``[(arrays, num_examples), ...] -> arrays``."""


def fedavg(results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
    """Average the clients' arrays weighted by their number of examples (McMahan et al., 2017).

    Sums in float64 and returns each tensor in its input dtype, in the first result's order.

    Raises
    ------
    AggregationError
        No results, tensors that differ between results, or a total weight of zero.
    UpdateRejected
        A negative or non-integer ``num_examples`` (reason ``invalid_num_examples``).
    """
    if not results:
        raise AggregationError("no updates to aggregate", reason="no_updates")
    spec = ModelSpec.from_arrays(results[0][0])
    for arrays, num_examples in results:
        _check_weight(num_examples)
        _check_same_spec(spec, arrays)
    total = sum(int(n) for _, n in results)
    if total == 0:
        raise AggregationError("total number of examples is zero", reason="zero_weight")
    averaged: NDArrays = {}
    for name, tensor in spec.items():
        weighted = [np.asarray(arrays[name], dtype=np.float64) * int(n) for arrays, n in results]
        averaged[name] = (np.sum(weighted, axis=0) / total).astype(tensor.dtype)
    return averaged


class Accumulator(ABC):
    """Collects ``(arrays, num_examples)`` updates one at a time, then yields the aggregate.

    Every update is validated against ``spec`` (names, shapes, dtypes, finite values) before it
    touches the state, so a rejected update leaves the accumulator unchanged.

    Parameters
    ----------
    spec:
        The model's tensors; updates that do not match raise ``ModelSpecMismatch`` /
        ``NonFiniteValues`` from :meth:`ModelSpec.validate`.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._count = 0
        self._total_examples = 0

    def add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        """Validate one update and fold it in."""
        _check_weight(num_examples)
        self.spec.validate(arrays)
        self._add(arrays, int(num_examples))
        self._count += 1
        self._total_examples += int(num_examples)

    @property
    def count(self) -> int:
        """Number of updates added."""
        return self._count

    @property
    def total_examples(self) -> int:
        """Sum of ``num_examples`` over the updates added."""
        return self._total_examples

    def result(self) -> NDArrays:
        """The aggregate of everything added so far (the accumulator stays usable)."""
        if self._count == 0:
            raise AggregationError("no updates to aggregate", reason="no_updates")
        if self._total_examples == 0:
            raise AggregationError("total number of examples is zero", reason="zero_weight")
        return self._result()

    @abstractmethod
    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None: ...

    @abstractmethod
    def _result(self) -> NDArrays: ...


class FedAvgAccumulator(Accumulator):
    """Streaming FedAvg: one float64 running weighted sum, O(model) memory.

    Gives the same result as :func:`fedavg` over the same updates (up to float64 rounding, in
    any order).

    Parameters
    ----------
    spec:
        The model's tensors (see :class:`Accumulator`).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        # Don't keep the updates: only their weighted sum.
        self._sum = {name: np.zeros(t.shape, dtype=np.float64) for name, t in spec.items()}

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        for name, running in self._sum.items():
            running += np.asarray(arrays[name], dtype=np.float64) * num_examples

    def _result(self) -> NDArrays:
        return {
            name: (running / self._total_examples).astype(self.spec[name].dtype) for name, running in self._sum.items()
        }


class BufferedAccumulator(Accumulator):
    """Keeps every update and applies a pure rule at the end: for rules that need them all.

    Parameters
    ----------
    spec:
        The model's tensors (see :class:`Accumulator`).
    aggregate_fn:
        The rule, e.g. :func:`fedavg` or a robust rule with the same signature.
    """

    def __init__(self, spec: ModelSpec, aggregate_fn: AggregateFn) -> None:
        super().__init__(spec)
        self._aggregate_fn = aggregate_fn
        self._results: list[tuple[NDArrays, int]] = []

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        self._results.append(({name: np.array(arrays[name], copy=True) for name in self.spec}, num_examples))

    def _result(self) -> NDArrays:
        return self._aggregate_fn(self._results)


def _check_weight(num_examples: object) -> None:
    if not isinstance(num_examples, numbers.Integral) or isinstance(num_examples, bool) or int(num_examples) < 0:
        raise UpdateRejected(
            f"num_examples must be a non-negative integer, got {num_examples!r}", reason="invalid_num_examples"
        )


def _check_same_spec(spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> None:
    got = ModelSpec.from_arrays(arrays)
    if dict(got) != dict(spec):  # same tensors; their order may differ
        raise AggregationError(
            f"results disagree on tensors: {spec.fingerprint()[:12]} vs {got.fingerprint()[:12]}",
            reason="inconsistent_results",
        )
