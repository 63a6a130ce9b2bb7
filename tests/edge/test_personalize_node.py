"""The device side of personalised FL over HTTP (``fl.personalize.DevicePersonalizer``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.fl.personalize import DevicePersonalizer, device_split, personal_layers
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays, set_arrays, train_local


def _setup(method: str) -> tuple[DevicePersonalizer, object, dict[str, np.ndarray]]:
    task = get_task("digits")
    train, held = device_split(task, 0, 4, partition="dirichlet", alpha=0.5, seed=0)
    model = task.build_model(0)
    return DevicePersonalizer(task, method, train, held), model, get_arrays(model)


def _train(p: DevicePersonalizer, model, start):  # type: ignore[no-untyped-def]
    tc = p.task.default_train_config().model_copy(update={"epochs": 1})
    set_arrays(model, p.start(start))
    train_local(model, p.train, **tc.as_kwargs(), seed=1)
    return p.after_training(model, get_arrays(model), start, tc, 1), tc


def test_fedper_personal_layers_never_leave_the_device() -> None:
    p, model, global_arrays = _setup("fedper")
    upload, _ = _train(p, model, global_arrays)
    own = personal_layers(global_arrays)
    for n in own:  # the upload carries the global values: a zero step for the personal layers
        np.testing.assert_array_equal(upload[n], global_arrays[n])
        assert p.personal is not None and not np.array_equal(p.personal[n], global_arrays[n])
    assert any(not np.array_equal(upload[n], global_arrays[n]) for n in upload if n not in own)
    nxt = p.start(global_arrays)  # the next round trains from the global base with the device's own head
    assert all(np.array_equal(nxt[n], p.personal[n]) for n in own)  # type: ignore[index]


def test_ditto_trains_a_personal_model_beside_the_upload() -> None:
    p, model, global_arrays = _setup("ditto")
    upload, _ = _train(p, model, global_arrays)
    assert p.personal is not None
    assert any(not np.array_equal(p.personal[n], upload[n]) for n in upload)
    assert all(np.array_equal(get_arrays(model)[n], upload[n]) for n in upload)  # the model holds the upload again


@pytest.mark.parametrize("method", ["finetune", "fedper", "ditto"])
def test_evaluate_gives_the_global_and_the_personalised_metric(method: str) -> None:
    p, model, global_arrays = _setup(method)
    upload, tc = _train(p, model, global_arrays)
    g, personal = p.evaluate(model, upload, tc, 2)
    assert 0.0 <= g <= 1.0 and 0.0 <= personal <= 1.0


def test_an_unknown_method_is_a_config_error(tmp_path: Path) -> None:
    task = get_task("digits")
    with pytest.raises(Exception, match="fedrep"):
        DevicePersonalizer(task, "fedrep", [], [])  # type: ignore[arg-type]
