"""Local training, and the bridge between torch modules and :data:`~qflare.types.NDArrays`.

Batches are tuples ``(*inputs, target)``: a model is called as ``model(*inputs)`` and its loss as
``model.loss(output, target)`` (see :class:`~qflare.fl.models.base.TaskModel`). Callers on a
shared machine should ``torch.set_num_threads(1)`` first; this module does not touch threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from qflare.errors import ConfigError, ModelSpecMismatch
from qflare.fl.spec import ModelSpec, TensorSpec
from qflare.fl.training_config import OptimizerName, TrainConfig
from qflare.types import NDArrays

if TYPE_CHECKING:
    from qflare.fl.local_dp import LocalDP

__all__ = [
    "LossFn",
    "OptimizerName",
    "TrainConfig",
    "TrainResult",
    "get_arrays",
    "model_spec",
    "set_arrays",
    "train_local",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TrainResult:
    """What local training reports: ``num_examples`` (the FedAvg weight) and the loss.

    ``mean_loss`` is the sample-weighted mean training loss over the batches of the last epoch
    (NaN if no batch of it was finite). ``diverged``: training stopped early because a loss, a
    gradient or the weights after a step were not finite; the model holds the weights before that
    step (finite) and ``num_steps`` counts the steps applied.
    """

    num_examples: int
    mean_loss: float
    num_steps: int
    diverged: bool = False


def train_local(
    model: nn.Module,
    dataset: Dataset[Batch],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: OptimizerName = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    proximal_mu: float = 0.0,
    dp: LocalDP | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset``; deterministic for a ``seed`` on one thread.

    ``loss_fn`` defaults to ``model.loss``. With ``proximal_mu > 0`` the loss gains FedProx's
    proximal term ``mu / 2 * ||w - w_start||^2`` (``w_start``: the weights on entry, i.e. the round's
    global model; see :class:`~qflare.fl.training_config.TrainConfig`). ``mean_loss`` reports the
    task loss without it. Raises ``ConfigError`` for impossible settings or an empty dataset.

    Training never leaves non-finite weights in ``model`` (given finite ones): a step whose loss or
    gradient is not finite, or after which a weight is not, is undone and training stops with
    ``TrainResult.diverged`` set. (A heavily noised global model, central DP at a small epsilon, has
    weights far from any trained model: its gradients explode under SGD with momentum and the weights
    overflow to inf, then NaN, within a round or two.) The device then uploads its last finite
    weights, which the aggregator clips like any other step.

    With ``dp`` (:class:`~qflare.fl.local_dp.LocalDP`) the training is DP-SGD with Opacus: per-example
    clipping, Gaussian noise, Poisson-sampled batches (from ``dp``'s noise seed, not ``seed``), each
    step recorded by ``dp``'s accountant.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(
            f"need epochs >= 1, batch_size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})",
            reason="invalid_train_config",
        )
    num_examples = len(dataset)  # type: ignore[arg-type]
    if num_examples == 0:
        raise ConfigError("cannot train on an empty dataset", reason="empty_dataset")
    criterion = loss_fn or getattr(model, "loss", None)
    if criterion is None:
        raise ConfigError(f"{type(model).__name__} has no loss(); pass loss_fn", reason="invalid_train_config")
    if proximal_mu < 0:
        raise ConfigError(f"proximal_mu must be >= 0, got {proximal_mu}", reason="invalid_train_config")
    if dp is not None:
        if proximal_mu > 0:
            raise ConfigError("local DP: DP-SGD noises the data's gradients only; set proximal_mu to 0",
                              reason="invalid_train_config")
        return dp.train(model, dataset, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        momentum=momentum, weight_decay=weight_decay, criterion=criterion, seed=seed)
    opt = _optimizer(model, optimizer, lr, momentum, weight_decay)
    # Don't track the start point's gradient: it is the fixed anchor of the proximal term.
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    generator = torch.Generator().manual_seed(seed)
    guard = _StepGuard(opt, [p for p in model.parameters() if p.requires_grad])
    model.train()
    total, seen, steps, diverged = 0.0, 0, 0, False
    for _ in range(epochs):
        total, seen = 0.0, 0
        for batch in _batches(dataset, batch_size, generator):
            *inputs, target = batch
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(*inputs), target)
            objective = loss
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                objective = loss + 0.5 * proximal_mu * prox
            objective.backward()
            value = float(objective.detach())  # the host sync the loss report needs anyway
            if not (math.isfinite(value) and guard.step()):
                diverged = True
                break
            total += (value if objective is loss else float(loss.detach())) * len(target)
            seen += len(target)
            steps += 1
        if diverged:
            break
    mean_loss = total / seen if seen else float("nan")
    return TrainResult(num_examples=num_examples, mean_loss=mean_loss, num_steps=steps, diverged=diverged)


def _finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite: one fused norm per tensor and one host sync.

    A norm is inf/NaN when an element is; computed in float64, it does not overflow for finite float32."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))).all())


class _StepGuard:
    """``opt.step()``, undone (and ``False``) if a weight is then not finite.

    A NaN/inf gradient makes the step's weights non-finite too, so one check after the step (one fused
    norm per tensor, one host sync) covers both; the caller checks the loss. The weights before each step
    are copied into buffers allocated once: the copy is what a bad step is undone to."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        self.opt, self.params = opt, params
        self.weights = [p.detach() for p in params]
        self.before = [w.clone() for w in self.weights]

    def step(self) -> bool:
        torch._foreach_copy_(self.before, self.weights)
        self.opt.step()
        if _finite(self.weights):
            return True
        torch._foreach_copy_(self.weights, self.before)
        return False


def get_arrays(model: nn.Module) -> NDArrays:
    """float32 numpy copies of ``model.state_dict()``, in its order."""
    arrays: NDArrays = {}
    for name, tensor in model.state_dict().items():
        _check_floating(name, tensor)
        arrays[name] = tensor.detach().cpu().numpy().astype(np.float32, copy=True)
    return arrays


def model_spec(model: nn.Module) -> ModelSpec:
    """The :class:`ModelSpec` of what :func:`get_arrays` returns for ``model`` (without copying)."""
    specs: dict[str, TensorSpec] = {}
    for name, tensor in model.state_dict().items():
        _check_floating(name, tensor)
        specs[name] = TensorSpec(tuple(tensor.shape), "float32")
    return ModelSpec(specs)


def set_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load ``arrays`` into ``model`` after checking names, shapes, dtypes and finiteness."""
    model_spec(model).validate(arrays)
    state = {name: torch.from_numpy(np.array(array, copy=True)) for name, array in arrays.items()}
    model.load_state_dict(state, strict=True)


def _check_floating(name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise ModelSpecMismatch(
            f"tensor {name!r}: only floating-point state can be aggregated, got {tensor.dtype}",
            reason="dtype_mismatch",
        )


def _optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'", reason="invalid_train_config")


def _batches(dataset: Dataset[Batch], batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    if isinstance(dataset, TensorDataset):
        # Fast path: slice the tensors directly instead of collating sample by sample.
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t[idx] for t in dataset.tensors)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
        for batch in loader:
            yield tuple(batch)
