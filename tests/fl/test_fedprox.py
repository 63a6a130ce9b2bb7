"""FedProx on the client: the proximal term keeps the local model near the round's global model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qflare.errors import ConfigError
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig, get_arrays, set_arrays, train_local


def _distance(mu: float) -> float:
    task = get_task("digits")
    model = task.build_model(0)
    start = get_arrays(model)
    data = task.client_dataset(0, 5, partition="dirichlet", alpha=0.5, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, proximal_mu=mu)
    set_arrays(model, start)
    train_local(model, data, **cfg.as_kwargs(), seed=1)
    after = get_arrays(model)
    return float(np.sqrt(sum(np.sum((after[k] - start[k]) ** 2) for k in start)))


def test_a_larger_mu_keeps_the_local_model_closer_to_the_start() -> None:
    torch.set_num_threads(1)
    plain, prox = _distance(0.0), _distance(1.0)
    assert prox < 0.8 * plain


def test_mu_zero_is_plain_training_and_negative_mu_is_refused() -> None:
    assert TrainConfig().proximal_mu == 0.0
    with pytest.raises(ValueError):
        TrainConfig(proximal_mu=-1.0)
    task = get_task("digits")
    with pytest.raises(ConfigError):
        train_local(task.build_model(0), task.client_dataset(0, 5), epochs=1, batch_size=8, lr=0.1, proximal_mu=-1)
