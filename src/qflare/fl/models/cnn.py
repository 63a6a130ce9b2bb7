"""A small CNN for the 8x8 handwritten digits of ``sklearn.datasets.load_digits``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qflare.fl.models.base import TaskModel

__all__ = ["DigitsCNN", "digits_wide_cnn"]


class DigitsCNN(TaskModel):
    """Two 3x3 convolutions, one max-pool and two dense layers; about 38k float32 parameters.

    Parameters
    ----------
    num_classes:
        Number of output logits.
    channels:
        Output channels of the two convolutions.
    hidden:
        Width of the dense hidden layer.

    Input is ``(batch, 1, 8, 8)`` with pixels scaled to [0, 1]; output is ``(batch, num_classes)``
    logits. No BatchNorm or dropout: the state is all float32 and training is deterministic for a
    seed.
    """

    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], kernel_size=3, padding=1)
        self.fc1 = nn.Linear(channels[1] * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the logits."""
        return F.cross_entropy(output, target)


WIDE_CHANNELS = (64, 128)
WIDE_HIDDEN = 448


def digits_wide_cnn(num_classes: int = 10) -> DigitsCNN:
    """:class:`DigitsCNN` widened to 996,938 float32 parameters (3.99 MB): the ``digits-wide`` task.

    Same layers, 64 and 128 convolution channels and a 448-wide dense layer, so that an update has
    the size of a real camera model (about 1M parameters) while the data stays the shipped digits:
    no download at run time. For load and ingest benchmarks; it learns the digits as well as the
    small CNN, only slower.
    """
    return DigitsCNN(num_classes, channels=WIDE_CHANNELS, hidden=WIDE_HIDDEN)
