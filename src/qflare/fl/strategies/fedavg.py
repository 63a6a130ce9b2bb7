"""Federated averaging as a :class:`~qflare.fl.strategies.base.Strategy`."""

from __future__ import annotations

from collections.abc import Sequence

from qflare.fl.aggregate import Accumulator, FedAvgAccumulator, fedavg
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies.base import Strategy
from qflare.types import NDArrays

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Weighted average of client models by number of examples, streamed.

    Its accumulator keeps one float64 running sum (O(model) memory), so updates can be folded in
    as they arrive and discarded.
    """

    name = "fedavg"

    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        """See :func:`qflare.fl.aggregate.fedavg`."""
        return fedavg(results)

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """A :class:`~qflare.fl.aggregate.FedAvgAccumulator` (``reference`` is not needed)."""
        return FedAvgAccumulator(spec)
