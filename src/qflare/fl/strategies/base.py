"""The strategy interface: how accepted updates become the next global model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from qflare.errors import ConfigError
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
    needs_reference: ClassVar[bool] = False
    """Whether :meth:`accumulator` needs the round's base model (``reference``): rules that reason
    about the size of a step (``update - base``). Backends load the base model when this is set."""

    @classmethod
    def check_params(cls, params: Mapping[str, object]) -> None:
        """Validate ``aggregation.params`` for this strategy; raise ``ConfigError`` naming ``aggregation.<key>``.

        The default accepts no parameters.
        """
        for key in params:
            raise ConfigError(
                f"aggregation.{key}: not a parameter of {cls.name} (accepted: none)",
                reason="invalid_aggregation_params",
            )

    @abstractmethod
    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        """Aggregate all ``(arrays, num_examples)`` results at once."""

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """A fresh accumulator for one round.

        ``reference`` is the round's base model (the global model the clients started from); rules
        with :attr:`needs_reference` use it, the others ignore it.
        """
        return BufferedAccumulator(spec, self.aggregate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
