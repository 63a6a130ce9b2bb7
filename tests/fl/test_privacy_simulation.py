"""Central DP in the in-process simulation: the spend per round, and a clean stop at the budget."""

from __future__ import annotations

import pytest

from qflare.fl.privacy import DPFixedClipping, PrivacyAccountant, epsilon_for
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
