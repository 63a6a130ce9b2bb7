"""Server optimizers: hand-computed two-round cases, invariants, state persistence, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load, save

from qflare.errors import AggregationError, ConfigError, MalformedPayload
from qflare.fl.optimizers import (
    SERVER_OPTIMIZERS,
    AdaptiveParams,
    FedAvgMParams,
    OptimizerState,
    fedadagrad_step,
    fedadam_step,
    fedavgm_step,
    fedyogi_step,
    make_params,
)
from qflare.types import NDArrays

SIMPLE = AdaptiveParams(eta=1.0, beta1=0.5, beta2=0.5, tau=0.5)


def _w(value: float) -> NDArrays:
    return {"w": np.array([value], np.float64)}


def _two_rounds(step: object, params: object) -> tuple[float, float, OptimizerState]:
    """Round 1: base 0, aggregate 1 (delta 1). Round 2: aggregate = x1 + 2 (delta 2)."""
    x1, state = step(_w(0.0), _w(1.0), None, params)  # type: ignore[operator]
    x2, state = step(x1, _w(float(x1["w"][0]) + 2.0), state, params)  # type: ignore[operator]
    return float(x1["w"][0]), float(x2["w"][0]), state


def test_fedavgm_two_rounds_by_hand() -> None:
    # Execute: lr 0.5, momentum 0.9: v1 = 1, x1 = 0.5; v2 = 0.9 + 2 = 2.9, x2 = 0.5 + 1.45
    x1, x2, state = _two_rounds(fedavgm_step, FedAvgMParams(lr=0.5, momentum=0.9))

    # Assert
    assert x1 == pytest.approx(0.5)
    assert x2 == pytest.approx(1.95)
    assert state.step == 2 and float(state.slots["v"]["w"][0]) == pytest.approx(2.9)


def test_fedadam_two_rounds_by_hand() -> None:
    # Execute: m1 = 0.5, v1 = 0.5*0.25 + 0.5*1 = 0.625; m2 = 1.25, v2 = 0.3125 + 2 = 2.3125
    x1, x2, state = _two_rounds(fedadam_step, SIMPLE)

    # Assert
    expected1 = 0.5 / (math.sqrt(0.625) + 0.5)
    assert x1 == pytest.approx(expected1)
    assert x2 == pytest.approx(expected1 + 1.25 / (math.sqrt(2.3125) + 0.5))
    assert float(state.slots["m"]["w"][0]) == pytest.approx(1.25)


def test_fedadagrad_two_rounds_by_hand() -> None:
    # Execute: v starts at tau^2 = 0.25; v1 = 1.25, v2 = 5.25
    x1, x2, state = _two_rounds(fedadagrad_step, SIMPLE)

    # Assert
    expected1 = 0.5 / (math.sqrt(1.25) + 0.5)
    assert x1 == pytest.approx(expected1)
    assert x2 == pytest.approx(expected1 + 1.25 / (math.sqrt(5.25) + 0.5))
    assert float(state.slots["v"]["w"][0]) == pytest.approx(5.25)


def test_fedyogi_two_rounds_by_hand() -> None:
    # Execute: v1 = 0.25 - 0.5*1*sign(0.25 - 1) = 0.75; v2 = 0.75 - 0.5*4*sign(0.75 - 4) = 2.75
    x1, x2, state = _two_rounds(fedyogi_step, SIMPLE)

    # Assert
    expected1 = 0.5 / (math.sqrt(0.75) + 0.5)
    assert x1 == pytest.approx(expected1)
    assert x2 == pytest.approx(expected1 + 1.25 / (math.sqrt(2.75) + 0.5))
    assert float(state.slots["v"]["w"][0]) == pytest.approx(2.75)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), rounds=st.integers(1, 4))
def test_fedavgm_without_momentum_and_unit_lr_is_plain_averaging(seed: int, rounds: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    base = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    state = None

    for _ in range(rounds):
        aggregate = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in base.items()}

        # Execute
        base, state = fedavgm_step(base, aggregate, state, FedAvgMParams(lr=1.0, momentum=0.0))

        # Assert: the new model is the aggregate
        for name in aggregate:
            np.testing.assert_allclose(base[name], aggregate[name], rtol=1e-6, atol=1e-7)
            assert base[name].dtype == np.float32


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMIZERS))
def test_zero_pseudo_gradient_leaves_the_model_in_place_on_the_first_round(name: str) -> None:
    # Prepare
    base = {"w": np.array([1.0, -2.0], np.float32)}

    # Execute
    out, state = SERVER_OPTIMIZERS[name].step(base, dict(base), None)

    # Assert
    np.testing.assert_array_equal(out["w"], base["w"])
    assert state.kind == name and state.step == 1


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMIZERS))
def test_state_survives_a_safetensors_round_trip(name: str) -> None:
    # Prepare: one round, persist, restore, and run round two both ways
    step = SERVER_OPTIMIZERS[name].step
    base = {"layer.weight": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)}
    agg1 = {k: v + 0.5 for k, v in base.items()}
    x1, state = step(base, agg1, None)
    agg2 = {k: v - 0.25 for k, v in x1.items()}

    # Execute
    restored = OptimizerState.from_arrays(load(save(state.to_arrays())), kind=name)
    direct, _ = step(x1, agg2, state)
    resumed, resumed_state = step(x1, agg2, restored)

    # Assert
    assert restored.step == state.step and resumed_state.step == 2
    for k in direct:
        np.testing.assert_array_equal(direct[k], resumed[k])


def test_non_floating_tensors_come_from_the_aggregate() -> None:
    # Prepare
    base: NDArrays = {"w": np.array([0.0], np.float32), "num_batches_tracked": np.array(3, np.int64)}
    aggregate: NDArrays = {"w": np.array([1.0], np.float32), "num_batches_tracked": np.array(7, np.int64)}

    # Execute
    out, state = fedadam_step(base, aggregate, None)

    # Assert
    assert int(out["num_batches_tracked"]) == 7 and out["num_batches_tracked"].dtype == np.int64
    assert set(state.slots["m"]) == {"w"}


def test_a_state_of_another_optimizer_is_refused() -> None:
    # Prepare
    _, state = fedadam_step(_w(0.0), _w(1.0), None)

    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        fedyogi_step(_w(0.0), _w(1.0), state)
    assert info.value.reason == "optimizer_state_mismatch"


def test_mismatched_tensors_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        fedavgm_step(_w(0.0), {"v": np.array([1.0])}, None)
    assert info.value.reason == "inconsistent_results"


def test_from_arrays_refuses_malformed_state() -> None:
    # Execute / Assert
    with pytest.raises(MalformedPayload):
        OptimizerState.from_arrays({"m/w": np.zeros(1)}, kind="fedadam")
    with pytest.raises(MalformedPayload):
        OptimizerState.from_arrays({"__step__": np.asarray(1), "w": np.zeros(1)}, kind="fedadam")


def test_make_params_parses_and_validates() -> None:
    # Execute
    params = make_params("fedyogi", {"eta": 0.01, "tau": 1e-3})

    # Assert
    assert params == AdaptiveParams(eta=0.01, tau=1e-3)
    assert make_params("fedavgm", {}) == FedAvgMParams()


@pytest.mark.parametrize(
    ("name", "values", "fragment"),
    [
        ("fedadam", {"beta1": 1.0}, "server_optimizer.beta1: must be in [0, 1)"),
        ("fedadam", {"tau": 0}, "server_optimizer.tau: must be > 0"),
        ("fedavgm", {"momentum": -0.1}, "server_optimizer.momentum"),
        ("fedavgm", {"eta": 0.1}, "server_optimizer.eta: not a parameter of fedavgm"),
        ("sgd", {}, "server_optimizer.name: unknown server optimizer"),
        ("fedadam", {"eta": "fast"}, "server_optimizer.eta: must be a finite number"),
    ],
)
def test_make_params_names_the_key(name: str, values: dict[str, object], fragment: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        make_params(name, values)
    assert info.value.reason == "invalid_optimizer_params"
    assert fragment in info.value.message
