"""Central DP: clipping wrappers, adaptive clipping, the RDP accountant and budget planning."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import fedavg
from qflare.fl.privacy import (
    DPAdaptiveClipping,
    DPFixedClipping,
    PrivacyAccountant,
    epsilon_for,
    noise_for_epsilon,
    plan_central,
)
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import FedAvg, get_strategy

BASE = {"w": np.zeros(4, dtype=np.float32), "b": np.ones(1, dtype=np.float32)}
SPEC = ModelSpec.from_arrays(BASE)


def _update(step: list[float]) -> dict[str, np.ndarray]:
    return {"w": np.array(step[:4], dtype=np.float32), "b": np.array([1 + step[4]], dtype=np.float32)}


def test_fixed_clipping_clips_each_step_and_weights_equally() -> None:
    # Prepare: one small step, one huge step claiming many examples; tiny noise
    strategy = DPFixedClipping(FedAvg(), clip=1.0, noise_multiplier=1e-9, seed=0)
    acc = strategy.accumulator(SPEC, reference=BASE)
    # Execute
    acc.add(_update([0.5, 0, 0, 0, 0]), 10)
    acc.add(_update([100.0, 0, 0, 0, 0]), 10**6)
    out = acc.result()
    # Assert: (0.5 + 1.0) / 2, the claim ignored
    np.testing.assert_allclose(out["w"], [0.75, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out["b"], [1.0], atol=1e-6)


def test_noise_has_the_calibrated_standard_deviation() -> None:
    # Prepare: 4 identical zero steps, clip 2, z 3 -> std of the mean 3 * 2 / 4 = 1.5
    spec = ModelSpec.from_arrays({"w": np.zeros(20000, dtype=np.float32)})
    strategy = DPFixedClipping(FedAvg(), clip=2.0, noise_multiplier=3.0, seed=1)
    acc = strategy.accumulator(spec, reference={"w": np.zeros(20000, dtype=np.float32)})
    for _ in range(4):
        acc.add({"w": np.zeros(20000, dtype=np.float32)}, 1)
    # Execute
    out = acc.result()["w"]
    # Assert
    assert abs(out.std() - 1.5) < 0.05
    assert abs(out.mean()) < 0.05


def test_noise_is_drawn_once_and_survives_a_checkpoint() -> None:
    strategy = DPFixedClipping(get_strategy("median"), clip=1.0, noise_multiplier=1.0, seed=2)
    acc = strategy.accumulator(SPEC, reference=BASE)
    acc.add(_update([0.1, 0.2, 0, 0, 0]), 3)
    acc.add(_update([0.3, 0.2, 0, 0, 0]), 5)
    acc.add(_update([9.0, 0.2, 0, 0, 0]), 5)
    state = acc.state()
    first = acc.result()
    # Execute: the same accumulator again, and one rebuilt from its state
    again = acc.result()
    rebuilt = strategy.accumulator(SPEC, reference=BASE).from_state(state).result()
    # Assert
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_array_equal(first[name], rebuilt[name])


def test_needs_the_base_model() -> None:
    with pytest.raises(AggregationError) as err:
        DPFixedClipping(FedAvg(), clip=1.0, noise_multiplier=1.0).accumulator(SPEC)
    assert err.value.reason == "missing_reference"


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"clip": 0.0, "noise_multiplier": 1.0}, "aggregation.privacy.clip"),
    ({"clip": -1.0, "noise_multiplier": 1.0}, "aggregation.privacy.clip"),
    ({"clip": 1.0, "noise_multiplier": 0.0}, "aggregation.privacy.noise_multiplier"),
    ({"clip": 1.0, "noise_multiplier": -2.0}, "aggregation.privacy.noise_multiplier"),
    ({"clip": 1.0, "noise_multiplier": float("nan")}, "aggregation.privacy.noise_multiplier"),
])
def test_nonsense_noise_parameters_name_the_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        DPFixedClipping(FedAvg(), **kwargs)
    assert key in err.value.message


def test_adaptive_clip_moves_towards_the_quantile() -> None:
    # Prepare: every step has norm 1; the clip starts at 0.01 (all clipped) -> it must grow
    strategy = DPAdaptiveClipping(FedAvg(), noise_multiplier=0.5, initial_clip=0.01, target_quantile=0.5,
                                  expected_clients=10, clipped_count_stddev=0.5, seed=3)
    for _ in range(40):
        acc = strategy.accumulator(SPEC, reference=BASE)
        for _ in range(10):
            acc.add(_update([1.0, 0, 0, 0, 0]), 1)
        acc.result()
    # Assert: grew from 0.01 to the steps' norm (within the noise of the count)
    assert 0.3 < strategy.clip < 3.0
    assert strategy.clip_history[0] == 0.01 and len(strategy.clip_history) == 41
    # the update noise is larger than z so that both releases together cost z
    assert strategy.update_noise_multiplier > strategy.noise_multiplier


def test_adaptive_refuses_a_count_noise_that_leaves_nothing_for_the_model() -> None:
    with pytest.raises(ConfigError) as err:
        DPAdaptiveClipping(FedAvg(), noise_multiplier=2.0, clipped_count_stddev=0.5)
    assert "clipped_count_stddev" in err.value.message


def test_accountant_matches_dp_accounting_and_is_monotone() -> None:
    eps10 = epsilon_for(1.0, 0.5, 10, 1e-5)
    eps20 = epsilon_for(1.0, 0.5, 20, 1e-5)
    assert 0 < eps10 < eps20
    assert epsilon_for(1.0, 0.1, 20, 1e-5) < eps20  # subsampling amplifies privacy
    acc = PrivacyAccountant(1.0, 1e-5)
    for _ in range(10):
        spent = acc.spend(0.5)
    assert spent.rounds == 10 and spent.epsilon == pytest.approx(eps10)
    assert spent.epsilon_round == pytest.approx(epsilon_for(1.0, 0.5, 1, 1e-5))


def test_target_epsilon_gives_a_noise_multiplier_that_spends_it() -> None:
    z = noise_for_epsilon(3.0, 1.0, 20, 1e-5)
    assert epsilon_for(z, 1.0, 20, 1e-5) <= 3.0 + 1e-6
    assert epsilon_for(z * 0.95, 1.0, 20, 1e-5) > 3.0
    plan = plan_central(noise_multiplier=None, target_epsilon=3.0, delta=1e-5, sampling_rate=1.0, rounds=20)
    assert plan.noise_multiplier == pytest.approx(z) and plan.budget == 3.0


def test_a_plan_exceeding_its_budget_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as err:
        plan_central(noise_multiplier=1.0, target_epsilon=3.0, delta=1e-5, sampling_rate=1.0, rounds=20)
    assert err.value.reason == "privacy_budget_exceeded"
    assert "aggregation.privacy.target_epsilon" in err.value.message


def test_accountant_refuses_the_round_that_would_exceed_the_budget() -> None:
    acc = PrivacyAccountant(2.0, 1e-5, budget=epsilon_for(2.0, 1.0, 3, 1e-5) + 1e-9)
    for _ in range(3):
        assert not acc.would_exceed(1.0)
        acc.spend(1.0)
    assert acc.would_exceed(1.0)
    with pytest.raises(AggregationError) as err:
        acc.spend(1.0)
    assert err.value.reason == "privacy_budget_reached"
    assert acc.spent().rounds == 3


def test_fedavg_reference_unchanged_by_the_wrapper() -> None:
    # with steps inside clip and negligible noise, DP-FedAvg with equal weights is the plain mean
    strategy = DPFixedClipping(FedAvg(), clip=10.0, noise_multiplier=1e-9, seed=4)
    updates = [_update([0.1 * i, 0.2, 0, 0, 0.1]) for i in range(5)]
    acc = strategy.accumulator(SPEC, reference=BASE)
    for u in updates:
        acc.add(u, 7)
    expected = fedavg([(u, 1) for u in updates])
    for name in expected:
        np.testing.assert_allclose(acc.result()[name], expected[name], atol=1e-6)


def test_a_finite_step_too_large_for_a_float32_norm_is_clipped_not_dropped() -> None:
    # Prepare: a step of 1e30 per coordinate (a device whose training ran away on a noised model):
    # its float32 squared norm overflows to inf, and an infinite norm meant clip factor 0
    strategy = DPFixedClipping(FedAvg(), clip=1.0, noise_multiplier=1e-9, seed=0)
    acc = strategy.accumulator(SPEC, reference=BASE)
    # Execute
    acc.add(_update([1e30, 1e30, 0, 0, 0]), 1)
    out = acc.result()
    # Assert: clipped to norm 1 along its direction
    np.testing.assert_allclose(out["w"], [2**-0.5, 2**-0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out["b"], [1.0], atol=1e-6)
