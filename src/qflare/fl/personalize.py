"""Personalised federated learning, in process: every device ends with its own model and its own metric.

Methods (``--personalize``):

- ``finetune``: FedAvg as usual; before evaluation each device fine-tunes the final global model on
  its own training data for ``finetune_epochs``.
- ``fedper`` (Arivazhagan et al., 2019): the base layers are federated, the personal layers (the
  model's head, :func:`personal_layers`) never leave the device; each device evaluates the global
  base with its own head.
- ``ditto`` (Li et al., 2021): FedAvg trains the global model; each device also trains a personal
  model each round, regularised towards the current global model by ``lam / 2 * ||v - w||^2``.

Each device's held-out data: for the forecasting tasks, the test days of its own sensors; for
digits, a fixed 20 % of its own (label-skewed) shard, so it is measured on its own distribution.
The summary gives mean and worst decile (10th percentile of accuracy, 90th percentile of MAE) of
the personalised and of the global model's per-device metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from qflare.errors import ConfigError
from qflare.fl.aggregate import fedavg
from qflare.fl.models import TaskModel
from qflare.fl.per_device import summarize
from qflare.fl.simulation import client_seed
from qflare.fl.tasks import Task, get_task
from qflare.fl.train import TrainConfig, get_arrays, set_arrays, train_local
from qflare.types import NDArrays

__all__ = ["METHODS", "DevicePersonalizer", "PersonalizedResult", "device_split", "local_only", "personal_layers",
           "run_personalized", "summarize"]

METHODS = ("finetune", "fedper", "ditto")


def personal_layers(arrays: NDArrays) -> list[str]:
    """The tensors FedPer keeps on the device: the GRU forecaster's ``head.*``, else the last layer."""
    names = list(arrays)
    head = [n for n in names if n.startswith("head.")]
    if head:
        return head
    last = names[-1].rsplit(".", 1)[0]
    return [n for n in names if n.rsplit(".", 1)[0] == last]


def device_split(task: Task, k: int, clients: int, *, partition: str | None, alpha: float,
                 seed: int) -> tuple[Dataset[Any], Dataset[Any]]:
    """Device ``k``'s (training data, held-out data), both from its own distribution."""
    train = task.client_dataset(k, clients, partition=partition, alpha=alpha, seed=seed)
    windows = getattr(train, "windows", None)
    if windows is not None:
        from qflare.fl.tasks.forecast import ForecastDataset

        test = task.test_dataset(seed=seed)
        tw = test.windows  # type: ignore[attr-defined]
        idx = np.flatnonzero(np.isin(tw.sensor, np.unique(windows.sensor)))
        return train, ForecastDataset(tw.subset(idx), test.steps_per_day)  # type: ignore[attr-defined]
    assert isinstance(train, TensorDataset)
    n = len(train)
    order = np.random.default_rng([seed, 7, k]).permutation(n)
    cut = max(1, round(0.2 * n))
    held, kept = np.sort(order[:cut]), np.sort(order[cut:])
    return (TensorDataset(*(t[torch.from_numpy(kept)] for t in train.tensors)),
            TensorDataset(*(t[torch.from_numpy(held)] for t in train.tensors)))


@dataclass
class PersonalizedResult:
    """Per-device metrics of the global and of the personalised models after the last round."""

    method: str
    metric: str
    global_per_device: list[float]
    personalized_per_device: list[float]
    global_test: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "personalize": self.method, f"global_{self.metric}": self.global_test.get(self.metric),
            **summarize(self.metric, "global", self.global_per_device),
            **summarize(self.metric, "personalized", self.personalized_per_device),
            "per_device": [{"device": k, "global": g, "personalized": p} for k, (g, p)
                           in enumerate(zip(self.global_per_device, self.personalized_per_device, strict=True))],
        }


def _ditto_loss(model: torch.nn.Module, anchor: list[torch.Tensor], lam: float,
                base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        return base(output, target) + 0.5 * lam * prox  # type: ignore[operator]

    return loss


def run_personalized(
    task: Task | str, clients: int, rounds: int, *, method: str, partition: str | None = None, alpha: float = 0.5,
    seed: int = 0, train_config: TrainConfig | None = None, finetune_epochs: int | None = None,
    ditto_lambda: float = 0.1,
) -> PersonalizedResult:
    """Federated training for ``rounds`` rounds with ``method``; returns per-device metrics.

    Parameters
    ----------
    finetune_epochs:
        ``finetune``: local epochs of fine-tuning (default: the task's local epochs).
    ditto_lambda:
        ``ditto``: strength of the pull towards the global model.
    """
    if method not in METHODS:
        raise ConfigError(f"--personalize: {method!r} is not one of {', '.join(METHODS)}", reason="bad_option")
    if clients < 1 or rounds < 1:
        raise ConfigError("need at least one client and one round", reason="invalid_config")
    task = get_task(task) if isinstance(task, str) else task
    tc = train_config or task.default_train_config()
    if tc.dp is not None:  # as_kwargs() leaves dp out: never train without the DP the config asks for
        raise ConfigError("personalisation does not run local DP (training.dp)", reason="invalid_config")
    splits = [device_split(task, k, clients, partition=partition, alpha=alpha, seed=seed) for k in range(clients)]
    global_model, local = task.build_model(seed), task.build_model(seed)
    global_arrays = get_arrays(global_model)
    own = set(personal_layers(global_arrays)) if method == "fedper" else set()
    personal: list[NDArrays] = [dict(global_arrays) for _ in range(clients)]
    for r in range(1, rounds + 1):
        results = []
        for k, (train, _) in enumerate(splits):
            start = {n: (personal[k][n] if n in own else a) for n, a in global_arrays.items()}
            set_arrays(local, start)
            res = train_local(local, train, **tc.as_kwargs(), seed=client_seed(seed, r, k))
            trained = get_arrays(local)
            if own:
                personal[k] = trained
            results.append((trained, res.num_examples))
            if method == "ditto":
                set_arrays(local, personal[k])
                anchor = [torch.from_numpy(global_arrays[n].copy()) for n in global_arrays]
                train_local(local, train, **tc.as_kwargs(), seed=client_seed(seed, r, k) + 1,
                            loss_fn=_ditto_loss(local, anchor, ditto_lambda, local.loss))
                personal[k] = get_arrays(local)
        global_arrays = fedavg(results)
    set_arrays(global_model, global_arrays)
    g_dev, p_dev = [], []
    for k, (train, held) in enumerate(splits):
        g_dev.append(task.evaluate(global_model, held)[task.metric])
        if method == "finetune":
            set_arrays(local, global_arrays)
            kw = tc.as_kwargs()
            if finetune_epochs is not None:
                kw["epochs"] = finetune_epochs
            train_local(local, train, **kw, seed=client_seed(seed, rounds + 1, k))
        elif method == "fedper":
            set_arrays(local, {n: (personal[k][n] if n in own else a) for n, a in global_arrays.items()})
        else:
            set_arrays(local, personal[k])
        p_dev.append(task.evaluate(local, held)[task.metric])
    return PersonalizedResult(method=method, metric=task.metric, global_per_device=g_dev,
                              personalized_per_device=p_dev,
                              global_test=task.evaluate(global_model, task.test_dataset(seed=seed)))


def local_only(task: Task | str, clients: int, epochs: int, *, partition: str | None = None, alpha: float = 0.5,
               seed: int = 0, train_config: TrainConfig | None = None) -> list[float]:
    """Each device trains alone for ``epochs`` epochs on its own data: its held-out metric, per device."""
    task = get_task(task) if isinstance(task, str) else task
    tc = train_config or task.default_train_config()
    if tc.dp is not None:
        raise ConfigError("local-only training does not run local DP (training.dp)", reason="invalid_config")
    kw = tc.as_kwargs()
    kw["epochs"] = epochs
    out = []
    for k in range(clients):
        train, held = device_split(task, k, clients, partition=partition, alpha=alpha, seed=seed)
        model = task.build_model(seed)
        train_local(model, train, **kw, seed=client_seed(seed, 0, k))
        out.append(task.evaluate(model, held)[task.metric])
    return out


class DevicePersonalizer:
    """One device's side of personalised FL over HTTP (the edge node's, ``DeviceConfig.personalize``).

    The same three methods as :func:`run_personalized`, on one device: ``finetune`` changes nothing
    during the rounds and fine-tunes the final global model; ``fedper`` trains from the global model with
    its own personal layers, and its upload carries the global model's values for them (a zero step: the
    personal layers never leave the device); ``ditto`` trains, after each round's regular local training,
    its personal model towards that round's global model. :meth:`evaluate` gives the held-out metric of
    the final global model and of the personalised one.
    """

    def __init__(self, task: Task, method: str, train: Dataset[Any], held_out: Dataset[Any], *,
                 epochs: int | None = None, ditto_lambda: float = 0.1) -> None:
        if method not in METHODS:
            raise ConfigError(f"personalize: {method!r} is not one of {', '.join(METHODS)}", reason="bad_option")
        self.task, self.method, self.train, self.held_out = task, method, train, held_out
        self.epochs, self.ditto_lambda = epochs, ditto_lambda
        self.personal: NDArrays | None = None  # fedper: the trained personal layers; ditto: the personal model

    def start(self, global_arrays: NDArrays) -> NDArrays:
        """What local training starts from this round."""
        if self.method != "fedper" or self.personal is None:
            return global_arrays
        return {n: self.personal.get(n, a) for n, a in global_arrays.items()}

    def after_training(self, model: TaskModel, trained: NDArrays, global_arrays: NDArrays,
                       tc: TrainConfig, seed: int) -> NDArrays:
        """The arrays to upload (``trained`` but for FedPer's personal layers); Ditto trains its personal model."""
        if self.method == "fedper":
            own = personal_layers(trained)
            self.personal = {n: trained[n].copy() for n in own}
            return {n: (global_arrays[n] if n in own else a) for n, a in trained.items()}
        if self.method == "ditto":
            set_arrays(model, self.personal if self.personal is not None else global_arrays)
            anchor = [torch.from_numpy(global_arrays[n].copy()) for n in global_arrays]
            train_local(model, self.train, **tc.as_kwargs(), seed=seed + 1,
                        loss_fn=_ditto_loss(model, anchor, self.ditto_lambda, model.loss))
            self.personal = get_arrays(model)
            set_arrays(model, trained)
        return trained

    def evaluate(self, model: TaskModel, final: NDArrays, tc: TrainConfig, seed: int) -> tuple[float, float]:
        """``(global, personalised)`` held-out metric of this device (``model`` is overwritten)."""
        metric = self.task.metric
        set_arrays(model, final)
        global_metric = float(self.task.evaluate(model, self.held_out)[metric])
        if self.method == "finetune":
            kw = tc.as_kwargs()
            if self.epochs is not None:
                kw["epochs"] = self.epochs
            train_local(model, self.train, **kw, seed=seed)
        elif self.method == "fedper":
            set_arrays(model, self.start(final))
        else:
            set_arrays(model, self.personal if self.personal is not None else final)
        return global_metric, float(self.task.evaluate(model, self.held_out)[metric])
