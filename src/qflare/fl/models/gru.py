"""A GRU forecaster for one sensor's next reading."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qflare.fl.models.base import TaskModel

__all__ = ["GRUForecaster"]


class GRUForecaster(TaskModel):
    """GRU over a window of past (normalised) readings, plus calendar features of the target time.

    Parameters
    ----------
    calendar_features:
        Number of calendar features describing the time being forecast (sin/cos hour of day,
        sin/cos day of week, weekend flag).
    hidden_size:
        GRU state size.
    head_size:
        Width of the dense layer that mixes the GRU state with the calendar features.

    ``forward(window, calendar)`` takes ``window`` of shape ``(batch, steps, 1)`` and ``calendar``
    of shape ``(batch, calendar_features)`` and returns ``(batch,)`` forecasts in normalised units.
    The head predicts the change from the last reading (a residual on the last-value forecast), so
    an untrained model starts near the naive forecaster and training only has to learn the
    correction.
    """

    def __init__(self, calendar_features: int = 5, hidden_size: int = 32, head_size: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=hidden_size, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden_size + calendar_features, head_size),
            nn.ReLU(),
            nn.Linear(head_size, 1),
        )

    def forward(self, window: torch.Tensor, calendar: torch.Tensor) -> torch.Tensor:
        _, state = self.gru(window)
        delta = self.head(torch.cat([state[-1], calendar], dim=1)).squeeze(1)
        return window[:, -1, 0] + delta

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Huber loss in normalised units: MSE-like near the target, robust to spikes."""
        return F.smooth_l1_loss(output, target)
