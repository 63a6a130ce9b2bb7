"""The base class of QFLARE models: a torch module that knows its training loss."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

__all__ = ["TaskModel"]


class TaskModel(nn.Module):
    """A model whose batches are ``(*inputs, target)`` and which defines its own loss.

    Keeping the loss on the model lets :func:`qflare.fl.train.train_local` serve every task with
    one loop. All state (parameters and buffers) must be float32, so that aggregation treats
    every tensor alike (hence no BatchNorm, whose step counter is int64).
    """

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch."""
