"""Local training hyperparameters: one model for the server's ``training:`` section, the task sent to
devices, each task's defaults and :func:`qflare.fl.train.train_local` (torch-free, so loading a config
does not load torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LocalDPConfig", "OptimizerName", "TrainConfig"]

OptimizerName = Literal["sgd", "adam"]


class LocalDPConfig(BaseModel):
    """``training.dp``: DP-SGD on every device with Opacus (:mod:`qflare.fl.local_dp`, docs/privacy.md).

    Parameters
    ----------
    mode:
        ``"local"``.
    noise_multiplier:
        Noise standard deviation over ``max_grad_norm`` on each batch's gradient sum; or give
        ``target_epsilon`` and ``rounds`` and let the accountant pick it per device.
    max_grad_norm:
        L2 bound on each example's gradient.
    target_epsilon:
        The device's budget (example-level, over all its rounds); alone, the noise multiplier that
        spends it in ``rounds`` rounds; with ``noise_multiplier``, a plan exceeding it is refused.
    delta:
        The delta of every epsilon reported.
    rounds:
        The rounds a device plans to train in (needed with ``target_epsilon``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["local"] = "local"
    noise_multiplier: float | None = Field(None, gt=0, le=1000)
    max_grad_norm: float = Field(1.0, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    rounds: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _noise_given(self) -> LocalDPConfig:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("give noise_multiplier or target_epsilon")
        if self.target_epsilon is not None and self.rounds is None:
            raise ValueError("target_epsilon needs rounds (the rounds the budget must last)")
        return self


class TrainConfig(BaseModel):
    """Hyperparameters of one client's local training in one round.

    Parameters
    ----------
    epochs:
        Passes over the local data per round.
    batch_size:
        Samples per optimiser step (the last batch of an epoch may be smaller).
    lr:
        Learning rate.
    optimizer:
        ``"sgd"`` or ``"adam"``; a fresh optimiser every round (no state crosses rounds).
    momentum:
        SGD momentum (ignored by Adam).
    weight_decay:
        L2 penalty.
    proximal_mu:
        FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, MLSys 2020, "Federated Optimization in
        Heterogeneous Networks"): adds ``mu / 2 * ||w - w_global||^2`` to the local loss, keeping
        local models near the round's global model; 0 (default) is plain local training.
    dp:
        Local differential privacy (DP-SGD, :class:`LocalDPConfig`); ``None``: none.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=65536)
    lr: float = Field(0.1, gt=0, le=10)
    optimizer: OptimizerName = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    proximal_mu: float = Field(0.0, ge=0, le=100)
    dp: LocalDPConfig | None = None

    @model_validator(mode="after")
    def _dp_without_proximal(self) -> TrainConfig:
        if self.dp is not None and self.proximal_mu > 0:
            raise ValueError("dp: DP-SGD clips and noises the data's gradients only; set proximal_mu to 0")
        return self

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~qflare.fl.train.train_local` (``dp`` is resolved per device into a
        :class:`~qflare.fl.local_dp.LocalDP`, passed separately)."""
        return self.model_dump(exclude={"dp"})
