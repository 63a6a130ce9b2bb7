"""The server's clean root data set and the root update FLTrust measures every client step against.

FLTrust (Cao, Fang, Liu & Gong, NDSS 2021) needs the server to hold a small clean data set (the
paper uses 100 examples sampled from the training data) and to train the round's global model on it,
as a client would, to get the *root update*. :class:`TaskRoot` is that for a registered task:

- the root data set is ``examples`` training examples of the task drawn without replacement by a
  seed (:func:`root_indices`) from the pooled training split (``client_dataset(0, 1,
  partition="iid")``): the images or windows the clients' shares are cut from, never the test split.
  Like the paper's root set, it may overlap the clients' data (the server holds copies of some of
  it); it is built from data shipped with the code (scikit-learn's digits, the synthetic city), so
  nothing is downloaded at run time;
- the root update trains from the round's base model on it with the task's default local training
  (:meth:`~qflare.fl.tasks.Task.default_train_config`), seeded, so the same base model gives the
  same root update (on one thread; torch's CPU kernels may round differently on others).

This module imports torch (through :mod:`qflare.fl.tasks` and :mod:`qflare.fl.train`); the numpy-only
strategy :class:`qflare.fl.strategies.fltrust.FLTrust` imports it only when a rule is built from a
task name.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from qflare.errors import AggregationError, ConfigError
from qflare.fl.spec import ModelSpec
from qflare.fl.tasks import Task, get_task
from qflare.fl.train import get_arrays, set_arrays, train_local
from qflare.types import NDArrays

__all__ = ["DEFAULT_ROOT_EXAMPLES", "TaskRoot", "root_indices"]

DEFAULT_ROOT_EXAMPLES = 100
"""The root data set's size in the FLTrust paper."""


def root_indices(available: int, examples: int, seed: int) -> np.ndarray:
    """``examples`` distinct indices in ``range(available)``, sorted, chosen by ``seed`` alone.

    Raises
    ------
    ConfigError
        ``examples`` not in ``1..available`` (``aggregation.root_examples``).
    """
    if not 1 <= examples <= available:
        raise ConfigError(
            f"aggregation.root_examples: the task's training split holds {available} examples; "
            f"a root data set needs 1..{available}, got {examples}",
            reason="invalid_aggregation_params",
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7200]))
    return np.sort(rng.choice(available, size=examples, replace=False))


class TaskRoot:
    """The root data set of a registered task, and the root update trained on it.

    Parameters
    ----------
    task:
        A task or its registry name (``aggregation.root_task``).
    examples:
        Size of the root data set (default 100, as in the paper).
    seed:
        The task's data seed: the train/test split the federation uses (``qflare simulate --seed``,
        0 by default), so the root examples come from its training split; also picks the examples and
        seeds the root training.

    Raises
    ------
    ConfigError
        An unknown task (``aggregation.root_task``), or a size the training split cannot give
        (``aggregation.root_examples``).
    """

    def __init__(self, task: Task | str, *, examples: int = DEFAULT_ROOT_EXAMPLES, seed: int = 0) -> None:
        if isinstance(task, str):
            try:
                task = get_task(task)
            except ConfigError as exc:
                raise ConfigError(f"aggregation.root_task: {exc.message}",
                                  reason="invalid_aggregation_params") from None
        for key, value, low in (("root_examples", examples, 1), ("root_seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ConfigError(f"aggregation.{key}: must be an integer >= {low}, got {value!r}",
                                  reason="invalid_aggregation_params")
        self.task = task
        self.examples = int(examples)
        self.seed = int(seed)
        pooled = task.client_dataset(0, 1, partition="iid", seed=self.seed)
        self.indices = root_indices(len(pooled), self.examples, self.seed)  # type: ignore[arg-type]
        self.dataset: Dataset[object] = Subset(pooled, self.indices.tolist())
        self.spec = task.model_spec()

    def update(self, reference: Mapping[str, np.ndarray], spec: ModelSpec) -> NDArrays:
        """The model after training ``reference`` on the root data set (full weights, like a client's).

        Raises
        ------
        AggregationError
            ``root_spec_mismatch``: the round's model is not this task's model.
        """
        if spec.fingerprint() != self.spec.fingerprint():
            raise AggregationError(
                f"FLTrust's root task {self.task.name!r} trains another model than this round's "
                f"(spec {self.spec.fingerprint()[:12]} vs {spec.fingerprint()[:12]}): set aggregation.root_task "
                "to the federation's task",
                reason="root_spec_mismatch",
            )
        model = self.task.build_model(self.seed)
        set_arrays(model, dict(reference))
        config = self.task.default_train_config()
        with _one_thread():
            train_local(model, self.dataset, **config.as_kwargs(), seed=self.seed)  # type: ignore[arg-type]
        return get_arrays(model)

    def __repr__(self) -> str:
        return f"TaskRoot(task={self.task.name!r}, examples={self.examples}, seed={self.seed})"


class _one_thread:  # noqa: N801 - used as a context manager
    """Train the root update on one thread (reproducible), then restore torch's thread count."""

    def __enter__(self) -> None:
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)
