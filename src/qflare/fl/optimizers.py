"""Server-side optimizers: how an aggregate moves the global model (pure step functions).

FedAvg replaces the global model by the aggregate. A server optimizer instead treats the
*pseudo-gradient* ``delta = aggregate - base`` as a (negative) gradient and takes a step:

- FedAvgM, server momentum (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification")::

      v <- momentum * v + delta;   x <- base + lr * v

- FedAdagrad, FedAdam, FedYogi (Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar & McMahan,
  ICLR 2021, "Adaptive Federated Optimization", Algorithm 2)::

      m <- beta1 * m + (1 - beta1) * delta
      v <- v + delta^2                                        (FedAdagrad)
      v <- beta2 * v + (1 - beta2) * delta^2                  (FedAdam)
      v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)      (FedYogi)
      x <- base + eta * m / (sqrt(v) + tau)

  with ``m`` starting at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``), and, as in the
  paper, no bias correction.

Every step is ``step(base, aggregate, state, params) -> (new_model, new_state)``; ``state=None``
starts fresh. Slots (``m``, ``v``) are float64; the model comes back in ``base``'s dtypes. Tensors
that are not floating point (e.g. BatchNorm's ``num_batches_tracked``) are taken from the
aggregate unchanged and get no slots. :meth:`OptimizerState.to_arrays` / :meth:`OptimizerState.
from_arrays` turn a state into plain :data:`~qflare.types.NDArrays` a checkpoint can store (e.g.
in safetensors).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from qflare.errors import AggregationError, ConfigError, MalformedPayload
from qflare.types import NDArrays

__all__ = [
    "SERVER_OPTIMIZERS",
    "AdaptiveParams",
    "FedAvgMParams",
    "OptimizerState",
    "ServerOptimizer",
    "fedadagrad_step",
    "fedadam_step",
    "fedavgm_step",
    "fedyogi_step",
    "make_params",
]

_STEP_KEY = "__step__"
_SEP = "/"


@dataclass(frozen=True)
class FedAvgMParams:
    """FedAvgM hyper-parameters.

    Parameters
    ----------
    lr:
        Server learning rate (default 1.0); ``lr = 1, momentum = 0`` is plain FedAvg.
    momentum:
        Server momentum in ``[0, 1)`` (default 0.9).
    """

    lr: float = 1.0
    momentum: float = 0.9


@dataclass(frozen=True)
class AdaptiveParams:
    """FedAdagrad / FedAdam / FedYogi hyper-parameters (Reddi et al. 2021).

    Parameters
    ----------
    eta:
        Server learning rate (default 0.1).
    eta_l:
        Client learning rate (default 0.1). Kept so one config section describes the whole
        algorithm; the server step does not use it, the clients' local optimiser does.
    beta1:
        First-moment decay in ``[0, 1)`` (default 0.9).
    beta2:
        Second-moment decay in ``[0, 1)`` (default 0.99; FedAdagrad ignores it).
    tau:
        Adaptivity / numerical-stability constant, > 0 (default 1e-3).
    """

    eta: float = 0.1
    eta_l: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True)
class OptimizerState:
    """A server optimizer's state between rounds.

    Parameters
    ----------
    kind:
        The optimizer's name (a key of :data:`SERVER_OPTIMIZERS`); a step refuses another's state.
    step:
        Number of steps taken.
    slots:
        Slot name (``"m"``, ``"v"``) -> float64 arrays for the floating tensors of the model.
    """

    kind: str
    step: int
    slots: Mapping[str, NDArrays] = field(default_factory=dict)

    def to_arrays(self) -> NDArrays:
        """Flat ``"<slot>/<tensor>"`` -> array, plus ``"__step__"`` (int64 scalar): safetensors-ready."""
        out: NDArrays = {_STEP_KEY: np.asarray(self.step, dtype=np.int64)}
        for slot, arrays in self.slots.items():
            for name, array in arrays.items():
                out[f"{slot}{_SEP}{name}"] = array
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], *, kind: str) -> OptimizerState:
        """Inverse of :meth:`to_arrays`; ``kind`` is stored next to the arrays (e.g. checkpoint metadata).

        Raises
        ------
        MalformedPayload
            No ``__step__`` entry or a key without a slot prefix (reason ``malformed_optimizer_state``).
        """
        if _STEP_KEY not in arrays:
            raise MalformedPayload("optimizer state lacks __step__", reason="malformed_optimizer_state")
        slots: dict[str, NDArrays] = {}
        for key, array in arrays.items():
            if key == _STEP_KEY:
                continue
            slot, sep, name = key.partition(_SEP)
            if not sep or not slot or not name:
                raise MalformedPayload(
                    f"optimizer state key {key!r} has no slot prefix", reason="malformed_optimizer_state"
                )
            slots.setdefault(slot, {})[name] = np.asarray(array, dtype=np.float64)
        return cls(kind=kind, step=int(np.asarray(arrays[_STEP_KEY])), slots=slots)


def _floating(base: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, a in base.items() if a.dtype.kind == "f"]


def _pseudo_gradient(base: NDArrays, aggregate: NDArrays) -> dict[str, np.ndarray]:
    if set(base) != set(aggregate):
        raise AggregationError(
            f"base and aggregate differ in tensors: {sorted(set(base) ^ set(aggregate))}", reason="inconsistent_results"
        )
    out: dict[str, np.ndarray] = {}
    for name in _floating(base):
        if base[name].shape != aggregate[name].shape:
            raise AggregationError(
                f"tensor {name!r}: base and aggregate differ in shape", reason="inconsistent_results"
            )
        out[name] = np.asarray(aggregate[name], dtype=np.float64) - np.asarray(base[name], dtype=np.float64)
    return out


def _slots(state: OptimizerState | None, kind: str, names: list[str], wanted: tuple[str, ...]) -> dict[str, NDArrays]:
    if state is None:
        return {}
    if state.kind != kind:
        raise AggregationError(
            f"optimizer state is for {state.kind!r}, not {kind!r}", reason="optimizer_state_mismatch"
        )
    for slot in wanted:
        if set(state.slots.get(slot, {})) != set(names):
            raise AggregationError(
                f"optimizer state slot {slot!r} does not match the model's tensors", reason="optimizer_state_mismatch"
            )
    return {slot: dict(state.slots[slot]) for slot in wanted}


def _apply(base: NDArrays, aggregate: NDArrays, moves: Mapping[str, np.ndarray]) -> NDArrays:
    out: NDArrays = {}
    for name, array in base.items():
        if name in moves:
            out[name] = (np.asarray(array, dtype=np.float64) + moves[name]).astype(array.dtype)
        else:
            out[name] = np.array(aggregate[name], copy=True)
    return out


def fedavgm_step(
    base: NDArrays,
    aggregate: NDArrays,
    state: OptimizerState | None,
    params: FedAvgMParams = FedAvgMParams(),  # noqa: B008  (frozen, immutable)
) -> tuple[NDArrays, OptimizerState]:
    """One FedAvgM step (Hsu, Qi & Brown 2019): ``v <- momentum v + delta; x <- base + lr v``.

    Parameters
    ----------
    base:
        The current global model.
    aggregate:
        This round's aggregate (FedAvg or a robust rule), full weights.
    state:
        The previous state, or ``None`` for the first round.
    params:
        :class:`FedAvgMParams` (default ``lr=1.0, momentum=0.9``).
    """
    kind = "fedavgm"
    delta = _pseudo_gradient(base, aggregate)
    slots = _slots(state, kind, list(delta), ("v",))
    velocity = slots.get("v", {name: np.zeros_like(d) for name, d in delta.items()})
    new_v = {name: params.momentum * velocity[name] + d for name, d in delta.items()}
    moves = {name: params.lr * v for name, v in new_v.items()}
    step = 0 if state is None else state.step
    return _apply(base, aggregate, moves), OptimizerState(kind=kind, step=step + 1, slots={"v": new_v})


def _adaptive(
    kind: str,
    base: NDArrays,
    aggregate: NDArrays,
    state: OptimizerState | None,
    params: AdaptiveParams,
    second_moment: Callable[[np.ndarray, np.ndarray, AdaptiveParams], np.ndarray],
) -> tuple[NDArrays, OptimizerState]:
    delta = _pseudo_gradient(base, aggregate)
    slots = _slots(state, kind, list(delta), ("m", "v"))
    m_prev = slots.get("m", {name: np.zeros_like(d) for name, d in delta.items()})
    v_prev = slots.get("v", {name: np.full_like(d, params.tau**2) for name, d in delta.items()})
    m_new: NDArrays = {}
    v_new: NDArrays = {}
    moves: dict[str, np.ndarray] = {}
    for name, d in delta.items():
        m_new[name] = params.beta1 * m_prev[name] + (1.0 - params.beta1) * d
        v_new[name] = second_moment(v_prev[name], d * d, params)
        moves[name] = params.eta * m_new[name] / (np.sqrt(v_new[name]) + params.tau)
    step = 0 if state is None else state.step
    return _apply(base, aggregate, moves), OptimizerState(kind=kind, step=step + 1, slots={"m": m_new, "v": v_new})


def fedadagrad_step(
    base: NDArrays,
    aggregate: NDArrays,
    state: OptimizerState | None,
    params: AdaptiveParams = AdaptiveParams(),  # noqa: B008
) -> tuple[NDArrays, OptimizerState]:
    """One FedAdagrad step (Reddi et al. 2021, Algorithm 2): ``v <- v + delta^2``."""
    return _adaptive("fedadagrad", base, aggregate, state, params, lambda v, d2, p: v + d2)


def fedadam_step(
    base: NDArrays,
    aggregate: NDArrays,
    state: OptimizerState | None,
    params: AdaptiveParams = AdaptiveParams(),  # noqa: B008
) -> tuple[NDArrays, OptimizerState]:
    """One FedAdam step (Reddi et al. 2021, Algorithm 2): ``v <- beta2 v + (1 - beta2) delta^2``."""
    return _adaptive("fedadam", base, aggregate, state, params, lambda v, d2, p: p.beta2 * v + (1.0 - p.beta2) * d2)


def fedyogi_step(
    base: NDArrays,
    aggregate: NDArrays,
    state: OptimizerState | None,
    params: AdaptiveParams = AdaptiveParams(),  # noqa: B008
) -> tuple[NDArrays, OptimizerState]:
    """One FedYogi step (Reddi et al. 2021, Algorithm 2): ``v <- v - (1 - beta2) delta^2 sign(v - delta^2)``."""
    return _adaptive(
        "fedyogi", base, aggregate, state, params, lambda v, d2, p: v - (1.0 - p.beta2) * d2 * np.sign(v - d2)
    )


@dataclass(frozen=True)
class ServerOptimizer:
    """A registered server optimizer: its step function and its parameter type."""

    name: str
    step: Callable[..., tuple[NDArrays, OptimizerState]]
    params_type: type[FedAvgMParams] | type[AdaptiveParams]


SERVER_OPTIMIZERS: dict[str, ServerOptimizer] = {
    "fedavgm": ServerOptimizer("fedavgm", fedavgm_step, FedAvgMParams),
    "fedadagrad": ServerOptimizer("fedadagrad", fedadagrad_step, AdaptiveParams),
    "fedadam": ServerOptimizer("fedadam", fedadam_step, AdaptiveParams),
    "fedyogi": ServerOptimizer("fedyogi", fedyogi_step, AdaptiveParams),
}
"""Config name -> :class:`ServerOptimizer`."""

_UNIT_INTERVAL = frozenset({"momentum", "beta1", "beta2"})


def make_params(name: str, values: Mapping[str, object], *, prefix: str = "server_optimizer") -> Any:
    """Validated parameters for optimizer ``name`` from a config mapping (missing keys take defaults).

    Raises
    ------
    ConfigError
        reason ``invalid_optimizer_params``; the message names ``<prefix>.<key>``: an unknown
        optimizer or key, a non-number, ``momentum``/``beta1``/``beta2`` outside ``[0, 1)``, or a
        learning rate / ``tau`` not > 0.
    """
    if name not in SERVER_OPTIMIZERS:
        raise ConfigError(
            f"{prefix}.name: unknown server optimizer {name!r} (known: {', '.join(sorted(SERVER_OPTIMIZERS))})",
            reason="invalid_optimizer_params",
        )
    params_type = SERVER_OPTIMIZERS[name].params_type
    known = {f.name for f in fields(params_type)}
    parsed: dict[str, float] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key}: not a parameter of {name} (accepted: {', '.join(sorted(known))})",
                reason="invalid_optimizer_params",
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ConfigError(
                f"{prefix}.{key}: must be a finite number, got {value!r}", reason="invalid_optimizer_params"
            )
        number = float(value)
        if key in _UNIT_INTERVAL and not 0 <= number < 1:
            raise ConfigError(f"{prefix}.{key}: must be in [0, 1), got {number}", reason="invalid_optimizer_params")
        if key not in _UNIT_INTERVAL and not number > 0:
            raise ConfigError(f"{prefix}.{key}: must be > 0, got {number}", reason="invalid_optimizer_params")
        parsed[key] = number
    return params_type(**parsed)
