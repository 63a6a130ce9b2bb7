"""In-process federated simulation: a fast smoke test, and the figures (slow) the defaults must reach."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.data.city import CityNetwork
from qflare.fl.simulation import client_seed, run_inprocess
from qflare.fl.strategies import FedAvg
from qflare.fl.tasks import ForecastTask, get_task
from qflare.fl.train import TrainConfig

FAST_DIGITS = TrainConfig(epochs=2, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)


def test_digits_smoke_two_rounds() -> None:
    # Prepare
    seen: list[int] = []

    # Execute
    history = run_inprocess("digits", 3, 2, seed=0, train_config=FAST_DIGITS, on_round=lambda m: seen.append(m.round))

    # Assert
    assert [m.round for m in history] == seen == [1, 2]
    assert all(len(m.client_seconds) == 3 for m in history)
    assert history[-1].metrics["accuracy"] > 0.6  # chance is 0.1
    assert history[-1].train_loss < history[0].train_loss
    assert history[0].update_bytes > 3 * 4 * sum(t.size for t in get_task("digits").model_spec().values())
    assert set(history[0].as_dict()) >= {"round", "metrics", "train_loss", "seconds"}


def test_simulation_is_deterministic() -> None:
    # Execute
    a = run_inprocess("digits", 2, 1, seed=1, train_config=FAST_DIGITS)
    b = run_inprocess("digits", 2, 1, seed=1, train_config=FAST_DIGITS)

    # Assert
    assert a[0].metrics == b[0].metrics and a[0].train_loss == b[0].train_loss


def test_forecast_smoke_two_rounds_beats_naive() -> None:
    # Prepare
    task = ForecastTask("pollution", network=CityNetwork(num_sensors=3, days=14), test_days=3)
    naive = task.naive_baseline(task.test_dataset())["mae"]

    # Execute
    history = run_inprocess(task, 3, 2, seed=0, strategy=FedAvg())

    # Assert
    assert len(history) == 2
    assert np.isfinite(history[-1].metrics["mae"])
    assert history[-1].metrics["mae"] < naive


def test_client_seeds_differ_per_round_and_client() -> None:
    # Execute
    seeds = {client_seed(0, r, k) for r in range(1, 21) for k in range(10)}

    # Assert
    assert len(seeds) == 200
    assert client_seed(0, 1, 1) == client_seed(0, 1, 1)


def test_invalid_simulation() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError):
        run_inprocess("digits", 0, 1)


@pytest.mark.slow
def test_digits_figure_ten_dirichlet_clients_twenty_rounds() -> None:
    # Execute: the documented figure with the task's default training config
    history = run_inprocess("digits", 10, 20, partition="dirichlet", alpha=0.5, seed=0)

    # Assert
    assert history[-1].metrics["accuracy"] >= 0.93


@pytest.mark.long
@pytest.mark.parametrize("name", ["traffic", "pollution"])
def test_forecast_figure_ten_sensor_clients_beat_naive(name: str) -> None:
    # Prepare
    task = get_task(name)
    naive = task.naive_baseline(task.test_dataset(seed=0))  # type: ignore[attr-defined]

    # Execute
    history = run_inprocess(task, 10, 15, seed=0)

    # Assert: clearly below the last-value forecaster, and below same-time-yesterday
    mae = history[-1].metrics["mae"]
    assert mae < 0.75 * naive["mae"]
    assert mae < naive["seasonal_mae"]
    # Local training time is a benchmark figure (docs/benchmarks.md), not asserted: a loaded machine varies it.
    assert all(len(m.client_seconds) == 10 and min(m.client_seconds) > 0 for m in history)


def test_reputation_in_process_takes_a_flagged_client_out_as_quarantine_does() -> None:
    from qflare.fl.poisoning import Poisoner
    from qflare.fl.strategies import get_strategy

    # Prepare: client 0 adds N(0, 1) noise to every step (flagged: far beyond the norm bound); 2 strikes of 3
    poisoner = Poisoner("gaussian", {}, num_classes=10)

    # Execute
    history = run_inprocess("digits", 5, 4, partition="iid", seed=0, strategy=get_strategy("bounded-fedavg"),
                            attack=poisoner, malicious=[0], reputation=(2, 3),
                            train_config=TrainConfig(epochs=1, batch_size=32, lr=0.05))

    # Assert: flagged in rounds 1 and 2, out from round 3 on (4 clients train); the others never flagged
    assert [m.flagged for m in history[:2]] == [[0], [0]]
    assert [m.quarantined for m in history] == [[], [0], [0], [0]]
    assert [len(m.client_seconds) for m in history] == [5, 5, 4, 4]
    assert all(m.flagged == [] for m in history[2:])
