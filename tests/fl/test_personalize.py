"""Personalisation: every device gets its own model and metric; the summary has mean and worst decile."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.personalize import device_split, personal_layers, run_personalized, summarize
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig

FAST = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)


def test_personal_layers_are_the_head() -> None:
    gru = {n: np.zeros(1) for n in ("gru.w", "head.0.weight", "head.2.bias")}
    cnn = {n: np.zeros(1) for n in ("conv1.weight", "fc2.weight", "fc2.bias")}
    assert personal_layers(gru) == ["head.0.weight", "head.2.bias"]
    assert personal_layers(cnn) == ["fc2.weight", "fc2.bias"]


def test_device_split_holds_out_own_data() -> None:
    task = get_task("traffic")
    train, held = device_split(task, 3, 10, partition=None, alpha=0.5, seed=0)
    assert set(np.unique(held.windows.sensor)) == set(np.unique(train.windows.sensor)) == {3}  # type: ignore[attr-defined]
    dtrain, dheld = device_split(get_task("digits"), 0, 4, partition="iid", alpha=0.5, seed=0)
    assert len(dheld) == pytest.approx(0.2 * (len(dtrain) + len(dheld)), abs=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["finetune", "fedper", "ditto"])
def test_each_method_reports_per_device_and_summary(method: str) -> None:
    # Execute
    result = run_personalized("digits", 4, 1, method=method, partition="iid", train_config=FAST)
    summary = result.summary()

    # Assert
    assert len(summary["per_device"]) == 4
    for key in ("personalized_accuracy_mean", "personalized_accuracy_worst_decile", "global_accuracy_mean",
                "global_accuracy_worst_decile", "global_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["personalized_accuracy_worst_decile"] <= summary["personalized_accuracy_mean"]


def test_summarize_worst_decile_direction() -> None:
    assert summarize("mae", "p", [1.0] * 9 + [11.0])["p_mae_worst_decile"] == pytest.approx(2.0)
    assert summarize("accuracy", "p", [1.0] * 9 + [0.0])["p_accuracy_worst_decile"] == pytest.approx(0.9)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        run_personalized("digits", 2, 1, method="fedrep")
    assert err.value.reason == "bad_option"
