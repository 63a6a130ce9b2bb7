"""Local training hyperparameters: one model for the server's ``training:`` section, the task sent to
devices, each task's defaults and :func:`qflare.fl.train.train_local` (torch-free, so loading a config
does not load torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OptimizerName", "TrainConfig"]

OptimizerName = Literal["sgd", "adam"]


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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=65536)
    lr: float = Field(0.1, gt=0, le=10)
    optimizer: OptimizerName = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    proximal_mu: float = Field(0.0, ge=0, le=100)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~qflare.fl.train.train_local`."""
        return self.model_dump()
