"""The strategy interface: how accepted updates become the next global model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from qflare.fl.aggregate import Accumulator, BufferedAccumulator
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["Strategy"]


class Strategy(ABC):
    """An aggregation rule the server (or enclave) can run in batch or streaming form.

    Subclasses implement :meth:`aggregate` by calling a pure function from
    :mod:`qflare.fl.aggregate`. A rule that can fold updates in one at a time also overrides
    :meth:`accumulator` to return a streaming accumulator; the default keeps every update
    (:class:`~qflare.fl.aggregate.BufferedAccumulator`). Wrappers (differential privacy,
    clipping) take a ``strategy: Strategy`` rather than subclass one.
    """

    name: str = "strategy"

    @abstractmethod
    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        """Aggregate all ``(arrays, num_examples)`` results at once."""

    def accumulator(self, spec: ModelSpec) -> Accumulator:
        """A fresh accumulator for one round."""
        return BufferedAccumulator(spec, self.aggregate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
