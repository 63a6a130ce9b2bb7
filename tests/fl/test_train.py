"""Local training and the torch <-> NDArrays bridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from qflare.errors import ConfigError, ModelSpecMismatch, NonFiniteValues
from qflare.fl.models import DigitsCNN
from qflare.fl.spec import ModelSpec
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig, get_arrays, model_spec, set_arrays, train_local


@pytest.fixture
def toy_digits() -> TensorDataset:
    """96 random images whose label is the quadrant with the brightest pixel (learnable)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 8, 8, generator=gen) * 0.2
    labels = torch.arange(96) % 4
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 0.8
    return TensorDataset(images, labels)


def test_get_arrays_returns_float32_copies_in_state_dict_order() -> None:
    # Prepare
    model = DigitsCNN()

    # Execute
    arrays = get_arrays(model)
    arrays["conv1.weight"][...] = 0

    # Assert
    assert list(arrays) == list(model.state_dict())
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert model.conv1.weight.abs().sum() > 0  # a copy, not a view
    assert ModelSpec.from_model(model) == ModelSpec.from_arrays(arrays) == model_spec(model)


def test_set_arrays_round_trip() -> None:
    # Prepare
    source, target = DigitsCNN(), DigitsCNN()
    arrays = get_arrays(source)

    # Execute
    set_arrays(target, arrays)
    arrays["fc2.bias"][...] = 123  # later changes to the arrays do not leak into the model

    # Assert
    for name, tensor in target.state_dict().items():
        torch.testing.assert_close(tensor, source.state_dict()[name])


def test_set_arrays_validates_before_loading() -> None:
    # Prepare
    model = DigitsCNN()
    before = get_arrays(model)
    wrong = {**before, "fc2.bias": np.zeros(11, np.float32)}
    poisoned = {**before, "fc2.bias": np.full(10, np.nan, np.float32)}

    # Execute
    with pytest.raises(ModelSpecMismatch) as mismatch:
        set_arrays(model, wrong)
    with pytest.raises(NonFiniteValues):
        set_arrays(model, poisoned)

    # Assert: nothing was loaded
    assert mismatch.value.reason == "shape_mismatch"
    after = get_arrays(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_integer_buffers_are_refused() -> None:
    # Prepare
    model = nn.BatchNorm1d(3)  # has an int64 num_batches_tracked buffer

    # Execute / Assert
    with pytest.raises(ModelSpecMismatch, match="num_batches_tracked"):
        get_arrays(model)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_reduces_the_loss(toy_digits: TensorDataset, optimizer: str) -> None:
    # Prepare
    model = DigitsCNN()
    config = TrainConfig(
        epochs=1, batch_size=16, lr=0.05 if optimizer == "sgd" else 0.003, optimizer=optimizer, momentum=0.9
    )

    # Execute
    first = train_local(model, toy_digits, **config.as_kwargs())
    later = train_local(model, toy_digits, **{**config.as_kwargs(), "epochs": 8})

    # Assert
    assert first.num_examples == later.num_examples == 96
    assert first.num_steps == 6 and later.num_steps == 48
    assert later.mean_loss < 0.5 * first.mean_loss


def test_training_is_deterministic_for_a_seed(toy_digits: TensorDataset) -> None:
    # Prepare
    models = [DigitsCNN() for _ in range(3)]
    start = get_arrays(models[0])
    for m in models:
        set_arrays(m, start)

    # Execute
    for m, seed in zip(models, [7, 7, 8], strict=True):
        train_local(m, toy_digits, epochs=2, batch_size=16, lr=0.05, seed=seed)
    a, b, c = (get_arrays(m) for m in models)

    # Assert
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


class _ListDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, inner: TensorDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner[i]


def test_generic_datasets_train_through_a_dataloader(toy_digits: TensorDataset) -> None:
    # Prepare
    model = DigitsCNN()

    # Execute
    result = train_local(model, _ListDataset(toy_digits), epochs=1, batch_size=32, lr=0.05)

    # Assert
    assert result.num_examples == 96 and result.num_steps == 3 and np.isfinite(result.mean_loss)


def test_explicit_loss_function(toy_digits: TensorDataset) -> None:
    # Prepare
    calls: list[int] = []

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(len(target))
        return nn.functional.cross_entropy(output, target)

    # Execute
    train_local(DigitsCNN(), toy_digits, epochs=1, batch_size=40, lr=0.01, loss_fn=loss_fn)

    # Assert
    assert calls == [40, 40, 16]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"epochs": 0}, "invalid_train_config"),
        ({"batch_size": 0}, "invalid_train_config"),
        ({"lr": 0.0}, "invalid_train_config"),
        ({"optimizer": "lbfgs"}, "invalid_train_config"),
    ],
)
def test_invalid_settings(toy_digits: TensorDataset, kwargs: dict, reason: str) -> None:
    # Prepare
    settings = {"epochs": 1, "batch_size": 8, "lr": 0.1, **kwargs}

    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        train_local(DigitsCNN(), toy_digits, **settings)
    assert info.value.reason == reason


def test_empty_dataset() -> None:
    # Prepare
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))

    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        train_local(DigitsCNN(), empty, epochs=1, batch_size=8, lr=0.1)
    assert info.value.reason == "empty_dataset"


def test_training_from_a_noised_model_stops_before_its_weights_become_non_finite() -> None:
    # Prepare: weights far from any trained model (what a global model noised for epsilon 1 looks like
    # after a few rounds); SGD with momentum 0.9 overflowed them to inf and then NaN
    digits = get_task("digits")
    dataset = digits.client_dataset(0, 10, seed=0)
    torch.manual_seed(0)
    model = DigitsCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 200)

    # Execute
    result = train_local(model, dataset, **digits.default_train_config().as_kwargs(), seed=0)

    # Assert: stopped, reported, and the model holds the last finite weights
    assert result.diverged
    assert result.num_steps < 25
    assert all(np.isfinite(a).all() for a in get_arrays(model).values())


def test_ordinary_training_does_not_report_divergence(toy_digits: TensorDataset) -> None:
    result = train_local(DigitsCNN(), toy_digits, epochs=2, batch_size=16, lr=0.05, momentum=0.9, seed=0)
    assert not result.diverged and result.num_steps == 12
