"""Local DP (DP-SGD on the device with Opacus): the accountant, the plan, learning, refusals."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qflare.config import GlobalConfig, parse_config
from qflare.errors import ConfigError
from qflare.fl.local_dp import LocalDP, steps_per_round
from qflare.fl.models import DigitsCNN, TaskModel
from qflare.fl.simulation import run_inprocess
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig, get_arrays, train_local
from qflare.fl.training_config import LocalDPConfig


@pytest.fixture
def toy_digits() -> TensorDataset:
    """96 images whose label is the bright quadrant (learnable), as in test_train.py."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 8, 8, generator=gen) * 0.2
    labels = torch.arange(96) % 4
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 0.8
    return TensorDataset(images, labels)


def test_epsilon_is_finite_and_grows_with_the_steps(toy_digits: TensorDataset) -> None:
    # Prepare
    model = DigitsCNN()
    dp = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, noise_seed=0)
    assert dp.epsilon == 0.0 and dp.steps == 0
    # Execute
    first = train_local(model, toy_digits, epochs=1, batch_size=16, lr=0.05, dp=dp)
    eps_one = dp.epsilon
    train_local(model, toy_digits, epochs=2, batch_size=16, lr=0.05, dp=dp)
    # Assert: 96 / 16 = 6 Poisson-sampled steps per epoch, all counted by Opacus's accountant
    assert first.num_steps == 6 and dp.steps == 18
    assert math.isfinite(eps_one) and 0 < eps_one < dp.epsilon < math.inf
    assert all(torch.isfinite(p).all() for p in model.parameters())
    meta = dp.metadata()
    assert meta["dp_mode"] == "local" and float(meta["dp_epsilon"]) == dp.epsilon and meta["dp_steps"] == "18"
    assert not hasattr(next(model.parameters()), "grad_sample")  # Opacus's hooks are gone after training


def test_dp_sgd_clips_and_noises_every_step(toy_digits: TensorDataset) -> None:
    # Prepare: two copies of one model, one trained with DP-SGD under huge noise
    plain, noised = DigitsCNN(), DigitsCNN()
    noised.load_state_dict(plain.state_dict())
    start = get_arrays(plain)
    # Execute
    train_local(plain, toy_digits, epochs=1, batch_size=16, lr=0.05, seed=0)
    train_local(noised, toy_digits, epochs=1, batch_size=16, lr=0.05,
                dp=LocalDP(noise_multiplier=100.0, max_grad_norm=1.0, noise_seed=0))
    # Assert: the noise (std 100 x 1 / 16 per step) dwarfs the plain step
    moved = {k: float(((a - start[k]) ** 2).sum()) for k, a in get_arrays(noised).items()}
    moved_plain = {k: float(((a - start[k]) ** 2).sum()) for k, a in get_arrays(plain).items()}
    assert sum(moved.values()) > 100 * sum(moved_plain.values())


def test_target_epsilon_is_spent_by_the_planned_rounds_and_no_more(toy_digits: TensorDataset) -> None:
    # Prepare
    config = LocalDPConfig(target_epsilon=4.0, rounds=3, max_grad_norm=1.0)
    dp = LocalDP.from_config(config, num_examples=96, batch_size=16, epochs=1, noise_seed=0)
    model = DigitsCNN()
    # Execute
    for _ in range(3):
        assert not dp.would_exceed(num_examples=96, batch_size=16, epochs=1)
        train_local(model, toy_digits, epochs=1, batch_size=16, lr=0.05, dp=dp)
    # Assert
    assert dp.steps == 3 * steps_per_round(96, 16, 1)
    assert 3.9 <= dp.epsilon <= 4.0
    assert dp.would_exceed(num_examples=96, batch_size=16, epochs=1)


@pytest.mark.slow
def test_training_still_learns_at_a_loose_budget() -> None:
    # Prepare: digits, 3 devices, 4 rounds of 2 epochs, epsilon 50 per device (example-level)
    train = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9,
                        dp=LocalDPConfig(target_epsilon=50.0, rounds=4, max_grad_norm=1.0))
    # Execute
    history = run_inprocess("digits", 3, 4, seed=0, train_config=train)
    # Assert: three times chance (0.10; 0.49 with seed 0); every device's epsilon within its budget and reported
    assert history[-1].metrics["accuracy"] > 0.3
    report = history[-1].local_privacy
    assert report is not None and report["mode"] == "local" and report["devices"] == 3
    assert 40 < report["epsilon"] <= 50.0 and report["delta"] == 1e-5
    assert [m.local_privacy["epsilon"] for m in history if m.local_privacy] == sorted(
        m.local_privacy["epsilon"] for m in history if m.local_privacy)


def test_devices_sit_out_once_their_budget_is_spent() -> None:
    # Prepare: a noise multiplier whose budget lasts about one round of the three asked for
    dp = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0)
    steps = steps_per_round(96, 32, 1)
    budget = dp.epsilon_after(steps, 32 / 96) * 1.2
    train = TrainConfig(epochs=1, batch_size=32, lr=0.05,
                        dp=LocalDPConfig(noise_multiplier=1.0, target_epsilon=budget, rounds=1))
    # Execute
    history = run_inprocess("digits", 15, 3, seed=0, train_config=train)
    # Assert: the run stops cleanly when no device may train; every reported epsilon within budget
    assert 1 <= len(history) < 3
    assert all(m.local_privacy is not None and m.local_privacy["epsilon"] <= budget * 1.0001 for m in history)


@pytest.mark.parametrize(("dp", "key"), [
    ({"noise_multiplier": 1.0, "max_grad_norm": 0}, "training.dp.max_grad_norm"),
    ({"noise_multiplier": 1.0, "max_grad_norm": -1.0}, "training.dp.max_grad_norm"),
    ({"noise_multiplier": -1.0}, "training.dp.noise_multiplier"),
    ({"noise_multiplier": 0}, "training.dp.noise_multiplier"),
    ({"noise_multiplier": 1.0, "delta": 1.0}, "training.dp.delta"),
    ({"target_epsilon": 0, "rounds": 5}, "training.dp.target_epsilon"),
    ({"target_epsilon": 3.0}, "target_epsilon needs rounds"),
    ({}, "give noise_multiplier or target_epsilon"),
    ({"mode": "central", "noise_multiplier": 1.0}, "training.dp.mode"),
    ({"noise_multiplier": 1.0, "clip": 1.0}, "training.dp.clip"),
])
def test_bad_local_dp_values_name_the_key(dp: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GlobalConfig, {"training": {"dp": dp}})
    assert key in err.value.message


def test_local_dp_with_fedprox_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GlobalConfig, {"training": {"proximal_mu": 0.1, "dp": {"noise_multiplier": 1.0}}})
    assert "proximal_mu" in err.value.message


def test_an_unreachable_or_exceeded_budget_is_refused_with_its_reason() -> None:
    with pytest.raises(ConfigError) as err:
        LocalDP.from_config(LocalDPConfig(target_epsilon=1e-6, rounds=20), num_examples=96, batch_size=16, epochs=5)
    assert err.value.reason == "privacy_budget_unreachable" and "training.dp.target_epsilon" in err.value.message
    with pytest.raises(ConfigError) as err:
        LocalDP.from_config(LocalDPConfig(noise_multiplier=0.5, target_epsilon=1.0, rounds=20), num_examples=96,
                            batch_size=16, epochs=5)
    assert err.value.reason == "privacy_budget_exceeded" and "budget 1.0" in err.value.message


def test_a_model_opacus_cannot_train_is_refused_with_its_reason(toy_digits: TensorDataset) -> None:
    class WithBatchNorm(TaskModel):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(1)
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.norm(x), 1))

        def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(output, target)

    with pytest.raises(ConfigError) as err:
        train_local(WithBatchNorm(), toy_digits, epochs=1, batch_size=16, lr=0.05,
                    dp=LocalDP(noise_multiplier=1.0, max_grad_norm=1.0))
    assert err.value.reason == "local_dp_unsupported_model" and "BatchNorm" in err.value.message


def test_without_opacus_the_refusal_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus now raises ImportError
    with pytest.raises(ConfigError) as err:
        LocalDP(noise_multiplier=1.0, max_grad_norm=1.0)
    assert err.value.reason == "missing_extra" and "'dp' extra" in err.value.message


def test_a_gru_forecaster_trains_under_dp_sgd_and_keeps_its_spec() -> None:
    # Prepare: nn.GRU has no per-example gradients in Opacus; its drop-in DPGRU holds the same state
    traffic = get_task("traffic")
    dataset = traffic.client_dataset(0, 10, seed=0)
    model = traffic.build_model(0)
    start = get_arrays(model)
    dp = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=0)
    # Execute
    first = train_local(model, dataset, **traffic.default_train_config().as_kwargs(), dp=dp)
    later = train_local(model, dataset, **traffic.default_train_config().as_kwargs(), dp=dp)
    # Assert: trained, still a plain nn.GRU with the same tensors (the server's spec), epsilon counted
    after = get_arrays(model)
    assert isinstance(model.gru, nn.GRU)  # type: ignore[attr-defined]
    assert list(after) == list(start) and all(after[k].shape == start[k].shape for k in start)
    assert any(not np.array_equal(after[k], start[k]) for k in start)
    assert later.mean_loss < first.mean_loss and dp.epsilon > 0


def test_paths_without_dp_sgd_refuse_a_dp_config_rather_than_train_without_it() -> None:
    from qflare.fl.personalize import local_only, run_personalized

    train = TrainConfig(epochs=1, dp=LocalDPConfig(noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="local DP"):
        run_personalized("digits", 2, 1, method="finetune", train_config=train)
    with pytest.raises(ConfigError, match="local DP"):
        local_only("digits", 2, 1, train_config=train)
