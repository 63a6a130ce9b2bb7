"""Models: shapes, float32-only state, deterministic initialisation, the registry."""

from __future__ import annotations

import pytest
import torch

from qflare.errors import ConfigError
from qflare.fl.models import DigitsCNN, GRUForecaster, build_model
from qflare.fl.train import get_arrays


def test_digits_cnn_maps_images_to_logits() -> None:
    # Prepare
    model = DigitsCNN()
    images = torch.rand(5, 1, 8, 8)

    # Execute
    logits = model(images)
    loss = model.loss(logits, torch.tensor([0, 1, 2, 3, 9]))

    # Assert
    assert logits.shape == (5, 10)
    assert loss.ndim == 0 and loss.item() > 0


def test_gru_forecaster_is_a_residual_on_the_last_reading() -> None:
    # Prepare
    model = GRUForecaster()
    with torch.no_grad():
        for p in model.head[-1].parameters():
            p.zero_()  # no correction: the forecast is the last reading
    window = torch.randn(4, 24, 1)
    calendar = torch.randn(4, 5)

    # Execute
    forecast = model(window, calendar)

    # Assert
    assert forecast.shape == (4,)
    torch.testing.assert_close(forecast, window[:, -1, 0])


@pytest.mark.parametrize("task", ["digits", "traffic", "pollution"])
def test_all_state_is_float32_and_init_is_seeded(task: str) -> None:
    # Execute
    a, b, c = build_model(task, seed=1), build_model(task, seed=1), build_model(task, seed=2)
    rng_before = torch.get_rng_state()
    build_model(task, seed=3)

    # Assert
    arrays_a, arrays_b, arrays_c = get_arrays(a), get_arrays(b), get_arrays(c)
    assert all(v.dtype.name == "float32" for v in arrays_a.values())
    assert all(t.dtype == torch.float32 for t in a.state_dict().values())
    assert all((arrays_a[k] == arrays_b[k]).all() for k in arrays_a)
    assert any((arrays_a[k] != arrays_c[k]).any() for k in arrays_a)
    assert torch.equal(rng_before, torch.get_rng_state())  # the global RNG is untouched


def test_models_are_small() -> None:
    # Execute
    sizes = {task: sum(p.numel() for p in build_model(task).parameters()) for task in ("digits", "traffic")}

    # Assert: small enough for an edge device and a quick round trip
    assert sizes["digits"] < 60_000
    assert sizes["traffic"] < 20_000


def test_unknown_task_has_no_model() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        build_model("weather")
    assert info.value.reason == "unknown_task"
