"""Tasks: the registry, client/test datasets, evaluation and the naive baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qflare.errors import ConfigError
from qflare.fl.data.city import CityNetwork
from qflare.fl.data.digits import digits_split
from qflare.fl.tasks import DigitsTask, ForecastDataset, ForecastTask, get_task
from qflare.fl.train import TrainConfig, get_arrays, train_local

SMALL_CITY = CityNetwork(num_sensors=4, days=14)


def _small_forecast(name: str = "traffic") -> ForecastTask:
    return ForecastTask(name, network=SMALL_CITY, test_days=3)


@pytest.mark.parametrize(("name", "metric"), [("digits", "accuracy"), ("digits-wide", "accuracy"), ("traffic", "mae"),
                                              ("pollution", "mae")])
def test_registry(name: str, metric: str) -> None:
    # Execute
    task = get_task(name)

    # Assert
    assert task.name == name and task.metric == metric
    assert task.higher_is_better == (metric == "accuracy")
    assert isinstance(task.default_train_config(), TrainConfig)
    assert list(task.model_spec()) == list(get_arrays(task.build_model()))


def test_digits_wide_is_the_digits_task_with_a_one_million_parameter_model() -> None:
    # Prepare
    wide, small = get_task("digits-wide"), get_task("digits")

    # Execute
    arrays = get_arrays(wide.build_model(seed=0))
    data = wide.client_dataset(0, 10, seed=0)

    # Assert: about 1M float32 values (4 MB updates), the same layer names as the small CNN, the same data
    assert sum(a.size for a in arrays.values()) == 996_938
    assert list(arrays) == list(get_arrays(small.build_model()))
    torch.testing.assert_close(data.tensors[0], small.client_dataset(0, 10, seed=0).tensors[0])
    model = wide.build_model()
    train_local(model, data, epochs=1, batch_size=32, lr=0.05)
    assert 0.0 <= wide.evaluate(model, wide.test_dataset())["accuracy"] <= 1.0


def test_unknown_task() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        get_task("weather")
    assert info.value.reason == "unknown_task"


@pytest.mark.parametrize("partition", ["dirichlet", "iid"])
def test_digits_clients_partition_the_training_set(partition: str) -> None:
    # Prepare
    task = DigitsTask()

    # Execute
    clients = [task.client_dataset(k, 10, partition=partition, alpha=0.5, seed=0) for k in range(10)]
    test = task.test_dataset(seed=0)

    # Assert: together the clients hold exactly the training split (as a multiset of images)
    images = torch.cat([c.tensors[0] for c in clients]).reshape(-1, 64).numpy()
    split = digits_split(0)
    expected = split.x_train.reshape(-1, 64)
    assert len(images) == 1437 and len(test) == 360
    for got_rows, want_rows in zip(
        np.unique(images, axis=0, return_counts=True), np.unique(expected, axis=0, return_counts=True), strict=True
    ):
        np.testing.assert_array_equal(got_rows, want_rows)
    assert min(len(c) for c in clients) >= 10
    assert images.min() >= 0 and images.max() <= 1


def test_digits_dirichlet_clients_are_label_skewed_and_deterministic() -> None:
    # Prepare
    task = DigitsTask()

    # Execute
    labels = [task.client_dataset(k, 10, alpha=0.1, seed=0).tensors[1] for k in range(10)]
    again = [task.client_dataset(k, 10, alpha=0.1, seed=0).tensors[1] for k in range(10)]

    # Assert
    assert all(torch.equal(a, b) for a, b in zip(labels, again, strict=True))
    dominant = [np.bincount(y.numpy(), minlength=10).max() / len(y) for y in labels]
    assert np.mean(dominant) > 0.5


def test_digits_evaluation_improves_with_training() -> None:
    # Prepare
    task = DigitsTask()
    model = task.build_model(seed=0)
    data, test = task.client_dataset(0, 1, partition="iid"), task.test_dataset()

    # Execute
    before = task.evaluate(model, test)
    train_local(model, data, **task.default_train_config().as_kwargs())
    after = task.evaluate(model, test)

    # Assert
    assert set(before) >= {"accuracy", "loss"}
    assert before["accuracy"] < 0.3 < 0.9 < after["accuracy"]
    assert after["loss"] < before["loss"]


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda t: t.client_dataset(10, 10), "invalid_partition"),
        (lambda t: t.client_dataset(0, 0), "invalid_partition"),
        (lambda t: t.client_dataset(0, 2, partition="sensor"), "invalid_partition"),
        (lambda t: t.client_dataset(0, 2, csv_path="x.csv"), "invalid_config"),
        (lambda t: t.test_dataset(csv_path="x.csv"), "invalid_config"),
    ],
)
def test_digits_refusals(call, reason: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        call(DigitsTask())
    assert info.value.reason == reason


def test_forecast_clients_are_sensors() -> None:
    # Prepare
    task = _small_forecast()

    # Execute
    one_each = [task.client_dataset(k, 4) for k in range(4)]
    pairs = [task.client_dataset(k, 2) for k in range(2)]

    # Assert
    assert [set(c.windows.sensor.tolist()) for c in one_each] == [{0}, {1}, {2}, {3}]
    assert [set(c.windows.sensor.tolist()) for c in pairs] == [{0, 1}, {2, 3}]
    assert all(len(c) == 11 * 24 - 24 for c in one_each)
    sample = one_each[0][0]
    assert [tuple(t.shape) for t in sample] == [(24, 1), (5,), ()]


def test_forecast_test_set_is_the_last_days_of_every_sensor() -> None:
    # Prepare
    task = _small_forecast()

    # Execute
    test = task.test_dataset()
    train = task.client_dataset(0, 1)

    # Assert
    assert len(test) == 4 * 3 * 24
    assert test.windows.target_time.min() > train.windows.target_time.max()
    assert str(test.windows.target_time.min()) == "2024-03-15T00:00"


def test_forecast_datasets_are_deterministic_per_seed() -> None:
    # Prepare
    task = _small_forecast()

    # Execute
    a, b, c = task.client_dataset(1, 4, seed=3), task.client_dataset(1, 4, seed=3), task.client_dataset(1, 4, seed=4)

    # Assert
    assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert not torch.equal(a.tensors[2], c.tensors[2])


def test_forecast_iid_partition_mixes_sensors() -> None:
    # Prepare
    task = _small_forecast()

    # Execute
    parts = [task.client_dataset(k, 3, partition="iid") for k in range(3)]

    # Assert
    assert sum(len(p) for p in parts) == len(task.client_dataset(0, 1))
    assert all(len(set(p.windows.sensor.tolist())) == 4 for p in parts)


def test_naive_baseline_is_last_value_mae_in_original_units() -> None:
    # Prepare
    task = _small_forecast()
    test = task.test_dataset()
    series = task.series()
    values = series.values("traffic")
    split = values.shape[0] - 3 * 24

    # Execute
    naive = task.naive_baseline(test)

    # Assert: recomputed from the raw series
    expected = np.abs(values[split:] - values[split - 1 : -1]).mean()
    expected_seasonal = np.abs(values[split:] - values[split - 24 : -24]).mean()
    assert naive["mae"] == pytest.approx(expected, rel=1e-4)
    assert naive["seasonal_mae"] == pytest.approx(expected_seasonal, rel=1e-4)


def test_untrained_forecaster_is_close_to_naive_and_training_beats_it() -> None:
    # Prepare
    task = _small_forecast("pollution")
    model = task.build_model(seed=0)
    test = task.test_dataset()
    naive = task.naive_baseline(test)["mae"]

    # Execute
    before = task.evaluate(model, test)
    train_local(model, task.client_dataset(0, 1), epochs=6, batch_size=32, lr=0.003, optimizer="adam")
    after = task.evaluate(model, test)

    # Assert
    assert set(after) >= {"mae", "rmse", "loss"}
    assert before["mae"] < 2 * naive
    assert after["mae"] < naive


def test_forecast_from_csv(data_dir: Path) -> None:
    # Prepare
    task = ForecastTask("traffic", test_days=2)
    path = data_dir / "metr_style_traffic.csv"

    # Execute
    clients = [task.client_dataset(k, 4, csv_path=path) for k in range(4)]
    test = task.test_dataset(csv_path=path)

    # Assert: 10 days = 8 training days (minus the first window) + 2 test days, per detector
    assert [len(c) for c in clients] == [8 * 24 - 24] * 4
    assert len(test) == 4 * 2 * 24
    assert task.series(csv_path=path).sensors == ("773869", "767541", "767542", "717447")
    assert task.naive_baseline(test)["mae"] > 0


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda t: t.client_dataset(0, 5), "invalid_partition"),  # 4 sensors
        (lambda t: t.client_dataset(0, 2, partition="dirichlet"), "invalid_partition"),
        (lambda t: t.test_dataset(csv_path="/nonexistent/file.csv"), "unreadable_csv"),
        (lambda t: t.evaluate(t.build_model(), torch.utils.data.TensorDataset(torch.zeros(1))), "invalid_dataset"),
    ],
)
def test_forecast_refusals(call, reason: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        call(_small_forecast())
    assert info.value.reason == reason


def test_forecast_dataset_keeps_its_windows() -> None:
    # Prepare
    task = _small_forecast()

    # Execute
    data = task.client_dataset(2, 4)

    # Assert
    assert isinstance(data, ForecastDataset)
    np.testing.assert_array_equal(data.tensors[2].numpy(), data.windows.target)
    assert data.steps_per_day == 24
