"""Bounded influence: capped sample counts, norm clipping, the median-norm bound, fast norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import AggregationError, ConfigError, ModelSpecMismatch
from qflare.fl.checks import l2_norm
from qflare.fl.influence import (
    cap_num_examples,
    cap_round_num_examples,
    cap_weight_shares,
    clip_factor,
    clip_to_norm,
    global_norm,
    norm_bound_from_median,
)
from qflare.types import NDArrays


def test_cap_num_examples_takes_the_smallest_of_claim_device_cap_and_median_multiple() -> None:
    # Execute / Assert
    assert cap_num_examples(50, device_cap=None, round_median=None) == 50
    assert cap_num_examples(50, device_cap=20, round_median=None) == 20
    assert cap_num_examples(10_000, device_cap=None, round_median=100.0, median_multiple=3.0) == 300
    assert cap_num_examples(10_000, device_cap=250, round_median=100.0, median_multiple=3.0) == 250
    assert cap_num_examples(0, device_cap=5, round_median=10.0) == 0


def test_median_cap_never_zeroes_a_positive_claim() -> None:
    # Execute / Assert: median 0.1 * 3 = 0.3 would floor to 0
    assert cap_num_examples(5, round_median=0.1) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"claimed": -1}, {"claimed": 1, "device_cap": -2}, {"claimed": 1, "median_multiple": 0.0}, {"claimed": True}],
)
def test_cap_num_examples_refuses_bad_inputs(kwargs: dict[str, object]) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        cap_num_examples(**kwargs)  # type: ignore[arg-type]
    assert info.value.reason == "invalid_aggregation_params"


def test_cap_round_num_examples_limits_an_inflated_claim() -> None:
    # Prepare: four honest claims around 100 and one attacker claiming a million
    claims = [90, 100, 110, 120, 1_000_000]

    # Execute
    capped = cap_round_num_examples(claims, device_caps=[None, None, None, 100, None])

    # Assert: median 110 -> cap 330; device 3 is capped at its enrolled 100
    assert capped == [90, 100, 110, 100, 330]
    assert cap_round_num_examples([]) == []


def test_clip_to_norm_scales_down_and_keeps_dtypes() -> None:
    # Prepare: norm sqrt(9 + 16) = 5
    delta: NDArrays = {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float64)}

    # Execute
    out = clip_to_norm(delta, 1.0)

    # Assert
    np.testing.assert_allclose(out["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [0.8])
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.float64
    assert list(out) == ["a", "b"]


def test_clip_to_norm_leaves_small_steps_alone() -> None:
    # Prepare
    delta = {"a": np.array([0.3, 0.4], np.float32)}

    # Execute
    out = clip_to_norm(delta, 1.0)

    # Assert
    assert out["a"] is delta["a"]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), bound=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_the_bound(seed: int, bound: float, scale: float) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    delta = {"a": rng.normal(scale=scale, size=(3, 5)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}

    # Execute
    out = clip_to_norm(delta, bound)

    # Assert
    assert global_norm(out) <= bound * (1 + 1e-5)


def test_norm_bound_from_median() -> None:
    # Execute / Assert
    assert norm_bound_from_median([1.0, 2.0, 3.0, 4.0, 100.0]) == 6.0
    assert norm_bound_from_median([1.0, 3.0], multiple=1.0) == 2.0


@pytest.mark.parametrize(
    ("norms", "multiple", "error", "reason"),
    [
        ([], 2.0, AggregationError, "no_updates"),
        ([1.0, math.nan], 2.0, AggregationError, "invalid_norm"),
        ([1.0], 0.0, ConfigError, "invalid_aggregation_params"),
    ],
)
def test_norm_bound_from_median_refuses(
    norms: list[float], multiple: float, error: type[AggregationError | ConfigError], reason: str
) -> None:
    # Execute / Assert
    with pytest.raises(error) as info:
        norm_bound_from_median(norms, multiple=multiple)
    assert info.value.reason == reason


def test_clip_factor() -> None:
    # Execute / Assert
    assert clip_factor(5.0, 1.0) == 0.2
    assert clip_factor(0.5, 1.0) == 1.0
    with pytest.raises(ConfigError):
        clip_factor(1.0, -1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_global_norm_matches_the_float64_reference(seed: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    arrays: NDArrays = {"a": rng.normal(size=(4, 6)).astype(np.float32), "n": np.array(3, np.int64)}
    reference: NDArrays = {"a": rng.normal(size=(4, 6)).astype(np.float32), "n": np.array(1, np.int64)}

    # Execute / Assert
    assert global_norm(arrays) == pytest.approx(l2_norm(arrays), rel=1e-5)
    assert global_norm(arrays, reference=reference) == pytest.approx(l2_norm(arrays, reference), rel=1e-5)


def test_global_norm_refuses_a_reference_with_other_tensors() -> None:
    # Execute / Assert
    with pytest.raises(ModelSpecMismatch):
        global_norm({"a": np.ones(2)}, reference={"b": np.ones(2)})


# -- share cap -------------------------------------------------------------------------------------


def test_cap_weight_shares_by_hand() -> None:
    # Execute / Assert: 3 x 1 and one 100; equal shares lower the 100 to 1
    assert cap_weight_shares([1, 1, 1, 100], max_share=1.0) == [1.0, 1.0, 1.0, 1.0]
    # max_share 1.5 over 4: at most 0.375 each. T = 1.5 * 3 / (4 - 1.5) = 1.8: 1.8 / 4.8 = 0.375
    assert cap_weight_shares([1, 1, 1, 100], max_share=1.5) == pytest.approx([1, 1, 1, 1.8])
    # already within the bound: unchanged; zero weights take no part
    assert cap_weight_shares([10, 11, 12], max_share=1.5) == [10.0, 11.0, 12.0]
    assert cap_weight_shares([0, 5, 10], max_share=1.0) == [0.0, 5.0, 5.0]
    assert cap_weight_shares([]) == []


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, float("inf"), float("nan"), True])
def test_cap_weight_shares_refuses_a_share_below_one(bad: float) -> None:
    with pytest.raises(ConfigError) as info:
        cap_weight_shares([1, 2], max_share=bad)
    assert info.value.reason == "invalid_aggregation_params"
    assert info.value.message.startswith("aggregation.max_share")


def test_cap_weight_shares_refuses_negative_weights() -> None:
    with pytest.raises(ConfigError):
        cap_weight_shares([1.0, -2.0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.just(0), st.integers(1, 10**7)), min_size=1, max_size=40),
    st.floats(1.0, 8.0),
    st.data(),
)
def test_any_k_updates_hold_at_most_k_times_max_share_over_n(
    weights: list[int], share: float, data: st.DataObject
) -> None:
    # Execute
    out = np.array(cap_weight_shares(weights, max_share=share))

    # Assert: never raised, and any subset (the heaviest k are the worst case) holds <= k * share / n
    raw = np.array(weights, dtype=np.float64)
    assert (out <= raw + 1e-9).all()
    n = int((raw > 0).sum())
    if n == 0:
        assert (out == 0).all()
        return
    heaviest = np.sort(out)[::-1]
    k = data.draw(st.integers(1, n))
    assert heaviest[:k].sum() / out.sum() <= min(1.0, k * share / n) * (1 + 1e-9)
    # the cap is the largest that meets the bound: lowered weights all sit at the bound's level
    lowered = out < raw - 1e-9
    if lowered.any():
        assert np.allclose(out[lowered], out.max())
