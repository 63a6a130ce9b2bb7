"""Central DP in the in-process simulation: the spend per round, and a clean stop at the budget."""

from __future__ import annotations

import math

import pytest

from qflare.fl.privacy import DPFixedClipping, PrivacyAccountant, epsilon_for, noise_for_epsilon
from qflare.fl.simulation import run_inprocess
from qflare.fl.strategies import FedAvg
from qflare.fl.train import TrainConfig

FAST_DIGITS = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)


def test_central_dp_reports_epsilon_per_round() -> None:
    # Prepare
    strategy = DPFixedClipping(FedAvg(), clip=0.2, noise_multiplier=1.0, seed=0)
    accountant = PrivacyAccountant(1.0, 1e-5)
    # Execute
    history = run_inprocess("digits", 3, 2, seed=0, train_config=FAST_DIGITS, strategy=strategy,
                            accountant=accountant)
    # Assert
    assert [m.privacy["rounds"] for m in history if m.privacy] == [1, 2]
    assert history[-1].privacy is not None
    assert history[-1].privacy["mode"] == "central"
    assert history[-1].privacy["epsilon"] == pytest.approx(epsilon_for(1.0, 1.0, 2, 1e-5))
    assert history[-1].privacy["delta"] == 1e-5


def test_run_reaching_its_budget_stops_with_the_last_model_within_budget() -> None:
    # Prepare: the budget allows exactly 2 rounds of the 5 asked for
    budget = epsilon_for(2.0, 1.0, 2, 1e-5) + 1e-9
    strategy = DPFixedClipping(FedAvg(), clip=0.2, noise_multiplier=2.0, seed=0)
    accountant = PrivacyAccountant(2.0, 1e-5, budget=budget)
    # Execute
    history = run_inprocess("digits", 3, 5, seed=0, train_config=FAST_DIGITS, strategy=strategy,
                            accountant=accountant)
    # Assert
    assert [m.round for m in history] == [1, 2]
    assert history[-1].privacy is not None and history[-1].privacy["epsilon"] <= budget
    assert accountant.spent().rounds == 2


@pytest.mark.slow
def test_a_heavily_noised_model_never_becomes_nan_and_its_accuracy_is_reported() -> None:
    # Prepare: epsilon 1 over 20 rounds for 10 devices (z = 18.09, noise std 1.8 per weight); local
    # training on that model used to overflow to NaN in round 3 (run_inprocess raised NonFiniteValues)
    z = noise_for_epsilon(1.0, 1.0, 20, 1e-5)
    strategy = DPFixedClipping(FedAvg(), clip=1.0, noise_multiplier=z, seed=0)
    # Execute
    history = run_inprocess("digits", 10, 5, seed=0, strategy=strategy, accountant=PrivacyAccountant(z, 1e-5))
    # Assert: every round ran (set_arrays refuses a non-finite global model), the divergences were
    # contained and counted, and the accuracy is a real figure (chance level: the noise wins)
    assert [m.round for m in history] == [1, 2, 3, 4, 5]
    assert sum(m.diverged for m in history) >= 1
    for m in history:
        assert math.isfinite(m.metrics["loss"]) and 0.0 <= m.metrics["accuracy"] <= 0.3
