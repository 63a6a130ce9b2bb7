"""FLTrust as a :class:`~qflare.fl.strategies.base.Strategy`: client steps weighted by their agreement
with a root update the aggregator trains itself on a small clean data set.

Cao, Fang, Liu & Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021; the rule is :func:`qflare.fl.robust.fltrust_with_outcome`. Each round the aggregator
(the enclave by default, or the server in process) trains the round's base model on its root data
set (:class:`qflare.fl.root.TaskRoot`), and each client step gets trust ``ReLU(cos(g_i, g_0))`` and
is rescaled to the root step's norm. A step pointing away from the root step counts for nothing,
however large it is and however many examples it claims.

Config::

    aggregation:
      rule: fltrust
      params: {root_task: digits, root_examples: 100, root_seed: 0}

``root_task`` (required) names the registered task whose clean training data the aggregator holds;
it must be the federation's task (its model must match the round's spec). ``root_examples`` (100)
and ``root_seed`` (0: the task's data seed, so the root examples come from the training split) pick
the root data set. These keys are part of the enclave's measured configuration, and the code that
builds the root data set and trains on it (:mod:`qflare.fl.root`, the tasks, models and local
training) is in the enclave's measured modules.

Memory: every update of the round (``n x model``, as the other buffered rules) plus one model for the
root update. Time: one local training on the root data set per round, at :meth:`Accumulator.result`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import Accumulator, BufferedAccumulator
from qflare.fl.robust import RuleOutcome, fltrust_with_outcome
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies.base import Strategy
from qflare.types import NDArrays

__all__ = ["FLTrust", "RootSource"]

_PARAMS = frozenset({"root_task", "root_examples", "root_seed"})
_DEFAULT_EXAMPLES = 100  # qflare.fl.root.DEFAULT_ROOT_EXAMPLES (not imported: that module imports torch)


class RootSource(Protocol):
    """Where the root update comes from: the base model trained on the aggregator's clean root data."""

    def update(self, reference: Mapping[str, np.ndarray], spec: ModelSpec) -> NDArrays:
        """The root model (full weights) trained from ``reference``; raise ``AggregationError`` if impossible."""


def _bad(key: str, message: str) -> ConfigError:
    return ConfigError(f"aggregation.{key}: {message}", reason="invalid_aggregation_params")


def _int(params: Mapping[str, object], key: str, default: int, low: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise _bad(key, f"must be an integer >= {low}, got {value!r}")
    return int(value)


class FLTrust(Strategy):
    """FLTrust (Cao et al., NDSS 2021) with the root update from ``root`` or from ``root_task``'s data.

    Parameters
    ----------
    root:
        A :class:`RootSource` (for programs and tests). Without it, ``root_task`` is required and the
        root data set is :class:`qflare.fl.root.TaskRoot` ``(root_task, examples=root_examples,
        seed=root_seed)``.
    **params:
        ``root_task`` (a task name), ``root_examples`` (int >= 1, default 100), ``root_seed`` (int >= 0,
        default 0).

    Raises
    ------
    ConfigError
        An unknown key; ``root_task`` missing, not a string or not a registered task; a bad
        ``root_examples`` (more than the task's training split holds) or ``root_seed``. Each names
        ``aggregation.<key>``.
    """

    name = "fltrust"
    needs_reference = True

    def __init__(self, root: RootSource | None = None, **params: Any) -> None:
        if root is None:
            self.check_params(params)
            from qflare.fl.root import TaskRoot  # torch: only when the rule trains its own root update

            root = TaskRoot(str(params["root_task"]), examples=_int(params, "root_examples", _DEFAULT_EXAMPLES, 1),
                            seed=_int(params, "root_seed", 0, 0))
        elif params:
            raise ConfigError("FLTrust takes either a root source or root_* parameters, not both",
                              reason="invalid_aggregation_params")
        self.root = root
        self.params: dict[str, Any] = dict(params)

    @classmethod
    def check_params(cls, params: Mapping[str, object]) -> None:
        """``root_task`` required (a registered task name); ``root_examples`` >= 1; ``root_seed`` >= 0."""
        for key in params:
            if key not in _PARAMS:
                raise _bad(key, f"not a parameter of {cls.name} (accepted: {', '.join(sorted(_PARAMS))})")
        task = params.get("root_task")
        if task is None:
            raise _bad("root_task", "FLTrust needs the task whose clean root data set the aggregator holds "
                                    "(e.g. root_task: digits); none is set")
        if not isinstance(task, str) or not task:
            raise _bad("root_task", f"must be a task name, got {task!r}")
        from qflare.fl.tasks import TASKS  # the registry (imports torch: FLTrust trains a root update)

        if task not in TASKS:
            raise _bad("root_task", f"unknown task {task!r}; known: {sorted(TASKS)}")
        _int(params, "root_examples", _DEFAULT_EXAMPLES, 1)
        _int(params, "root_seed", 0, 0)

    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        """Not available without the base model: use :meth:`accumulator` with ``reference``."""
        raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """A buffered accumulator; :meth:`~Accumulator.result` trains the root update once and applies FLTrust.

        Its :meth:`~Accumulator.state` holds the buffered updates only: the root update is a function
        of the base model and the root data set, so a restored accumulator trains it again.

        Raises
        ------
        AggregationError
            ``missing_reference`` without the round's base model.
        """
        if reference is None:
            raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")
        base = reference
        root = self.root
        cache: list[NDArrays] = []

        def run(results: Sequence[tuple[NDArrays, int]]) -> RuleOutcome:
            if not cache:
                cache.append(root.update(base, spec))
            return fltrust_with_outcome(results, root=cache[0], reference=base)

        return BufferedAccumulator(spec, outcome_fn=run)

    def __repr__(self) -> str:
        return f"FLTrust(root={self.root!r})"
