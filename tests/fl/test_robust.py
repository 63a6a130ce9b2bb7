"""Robust aggregation rules: hand-computed cases, the papers' invariants, parameter validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import AggregationError, ConfigError, UpdateRejected
from qflare.fl import robust
from qflare.fl.influence import global_norm
from qflare.fl.robust import (
    ROBUST_RULES,
    ROBUST_RULES_WITH_OUTCOME,
    RULE_PARAMS,
    RuleOutcome,
    bulyan_with_outcome,
    centered_clipping_with_outcome,
    check_rule_params,
    fltrust_with_outcome,
    krum_with_outcome,
    median,
    min_updates,
    multi_krum_with_outcome,
    norm_bound_with_outcome,
    trimmed_mean,
)
from qflare.types import NDArrays

Results = list[tuple[NDArrays, int]]


def _scalars(values: list[float], dtype: Any = np.float32) -> Results:
    return [({"w": np.array([v], dtype)}, 1) for v in values]


def _vectors(rows: list[list[float]], weights: list[int] | None = None) -> Results:
    weights = weights or [1] * len(rows)
    return [({"w": np.array(row, np.float32)}, w) for row, w in zip(rows, weights, strict=True)]


def _from_matrix(matrix: np.ndarray) -> Results:
    """Rows of ``matrix`` as two-tensor updates (a 2-vector and the rest as a 1-D tensor)."""
    return [({"a": row[:2].copy(), "b": row[2:].copy()}, 1) for row in matrix]


def _flat(arrays: NDArrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays.values()]).astype(np.float64)


# -- hand-computed cases --------------------------------------------------------------------------


def test_median_of_five_scalars_ignores_the_outlier() -> None:
    # Execute
    out = median(_scalars([1, 2, 3, 4, 100]))

    # Assert
    np.testing.assert_array_equal(out["w"], np.array([3.0], np.float32))


def test_median_of_an_even_count_averages_the_two_middle_values() -> None:
    # Execute
    out = median(_scalars([1, 2, 3, 100]))

    # Assert
    np.testing.assert_array_equal(out["w"], np.array([2.5], np.float32))


def test_median_is_per_coordinate() -> None:
    # Prepare: the median of each column comes from a different update
    results = _vectors([[1, 30], [2, 10], [3, 20]])

    # Execute
    out = median(results)

    # Assert
    np.testing.assert_array_equal(out["w"], np.array([2, 20], np.float32))


def test_trimmed_mean_drops_floor_beta_n_from_each_end() -> None:
    # Prepare: beta = 0.2, n = 5 -> one value trimmed per side: mean(2, 3, 4) and mean(-1, 0, 1)
    results = _vectors([[1, -50], [2, 0], [3, 1], [4, -1], [100, 50]])

    # Execute
    outcome = robust.trimmed_mean_with_outcome(results, beta=0.2)

    # Assert
    np.testing.assert_allclose(outcome.arrays["w"], [3.0, 0.0])
    assert outcome.selected == (0, 1, 2, 3, 4)
    assert math.isclose(sum(outcome.weights), 1.0)


def test_trimmed_mean_with_beta_zero_is_the_plain_mean() -> None:
    # Execute
    out = trimmed_mean(_scalars([1, 2, 3, 4, 100]), beta=0.0)

    # Assert
    np.testing.assert_allclose(out["w"], [22.0])


def test_krum_picks_the_update_with_the_smallest_neighbour_distances() -> None:
    # Prepare: f = 1, n = 5 -> 2 neighbours. Scores: 0 -> 1+9 = 10, 1 -> 1+4 = 5, 3 -> 4+9 = 13,
    # 7 -> 16+36 = 52, 100 -> huge; Krum picks the value 1 (index 1).
    results = _scalars([0, 1, 3, 7, 100])

    # Execute
    outcome = krum_with_outcome(results, f=1)

    # Assert
    np.testing.assert_array_equal(outcome.arrays["w"], np.array([1.0], np.float32))
    assert outcome.selected == (1,)
    assert outcome.flagged == (0, 2, 3, 4)
    assert outcome.scores[:4] == pytest.approx((10.0, 5.0, 13.0, 52.0))
    assert outcome.verdicts() == ("excluded", "accepted", "excluded", "excluded", "excluded")


def test_multi_krum_averages_the_m_best_scores() -> None:
    # Prepare: the two best scores (see the Krum case) are indices 1 (5) and 0 (10)
    results = _scalars([0, 1, 3, 7, 100])

    # Execute
    outcome = multi_krum_with_outcome(results, f=1, m=2)

    # Assert
    np.testing.assert_allclose(outcome.arrays["w"], [0.5])
    assert outcome.selected == (0, 1)
    assert outcome.weights == (0.5, 0.5, 0.0, 0.0, 0.0)


def test_multi_krum_defaults_to_n_minus_f() -> None:
    # Execute
    outcome = multi_krum_with_outcome(_scalars([0, 1, 3, 7, 100]), f=1)

    # Assert: the four best, so the outlier alone is out
    assert outcome.selected == (0, 1, 2, 3)
    np.testing.assert_allclose(outcome.arrays["w"], [2.75])


def test_bulyan_hand_case() -> None:
    # Prepare: n = 7, f = 1 -> theta = 5 picked by repeated Krum, beta = 3 averaged per coordinate.
    # Picks: 4 (score 10, tied with 3 but nearer everything), 3 (9), 5 (10, tied with 2 but nearer
    # the rest), 2 (1, tied with 1), 6 (25, tied with 1). Median of {2,...,6} is 4, the 3 closest
    # are {3, 4, 5} -> 4.
    results = _scalars([1, 2, 3, 4, 5, 6, 100])

    # Execute
    outcome = bulyan_with_outcome(results, f=1)

    # Assert
    np.testing.assert_allclose(outcome.arrays["w"], [4.0])
    assert outcome.selected == (1, 2, 3, 4, 5)
    assert {0, 6} <= set(outcome.flagged)
    assert outcome.weights[2:5] == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert outcome.verdict(6) == "excluded"


def test_centered_clipping_one_iteration_around_a_reference() -> None:
    # Prepare: centre 0, tau = 1: (3, 4) is clipped to (0.6, 0.8), (0, 0.5) is inside
    results = _vectors([[3, 4], [0, 0.5]])
    center = {"w": np.zeros(2, np.float32)}

    # Execute
    outcome = centered_clipping_with_outcome(results, reference=center, tau=1.0, iterations=1)

    # Assert: v = ((0.6, 0.8) + (0, 0.5)) / 2
    np.testing.assert_allclose(outcome.arrays["w"], [0.3, 0.65], rtol=1e-6)
    assert outcome.clipped == (0,)
    assert outcome.verdicts() == ("clipped", "accepted")
    assert outcome.scores == pytest.approx((5.0, 0.5))


def test_centered_clipping_iterations_move_towards_the_cluster() -> None:
    # Prepare: four honest at 10, one attacker at 1000; start at 0 with tau = 5
    results = _scalars([10, 10, 10, 10, 1000])
    start = {"w": np.zeros(1, np.float32)}

    # Execute
    one = centered_clipping_with_outcome(results, reference=start, tau=5.0, iterations=1)
    many = centered_clipping_with_outcome(results, reference=start, tau=5.0, iterations=10)

    # Assert: one step moves by at most tau; the iterations converge to the fixed point where the
    # honest pull 4 * (10 - v) balances the clipped attacker's 5: v = 10 + 5/4, whatever it sends
    assert float(one.arrays["w"][0]) == pytest.approx(5.0)
    assert float(many.arrays["w"][0]) == pytest.approx(11.25, abs=1e-4)


def test_norm_bound_clips_steps_then_weights_by_num_examples() -> None:
    # Prepare: reference (1, 1); steps (3, 4) (weight 1) and (0, 1) (weight 3), bound 1
    ref = {"w": np.array([1, 1], np.float32)}
    results = _vectors([[4, 5], [1, 2]], weights=[1, 3])

    # Execute
    outcome = norm_bound_with_outcome(results, reference=ref, bound=1.0)

    # Assert: (1*(0.6, 0.8) + 3*(0, 1)) / 4 = (0.15, 0.95), plus the reference
    np.testing.assert_allclose(outcome.arrays["w"], [1.15, 1.95], rtol=1e-6)
    assert outcome.clipped == (0,)
    assert outcome.weights == (0.25, 0.75)


def test_norm_bound_default_is_twice_the_median_norm() -> None:
    # Prepare: delta norms 1, 2, 3, 4, 100 -> median 3 -> bound 6: only the last is clipped (to 6)
    results = _scalars([1, 2, 3, 4, 100])

    # Execute
    outcome = norm_bound_with_outcome(results)

    # Assert
    np.testing.assert_allclose(outcome.arrays["w"], [(1 + 2 + 3 + 4 + 6) / 5], rtol=1e-6)
    assert outcome.clipped == (4,)


def test_fltrust_hand_case() -> None:
    # Prepare: root (1, 0). (2, 0): trust 1, rescaled to (1, 0); (0, 3): orthogonal, trust 0;
    # (-5, 0): opposite, trust 0; (1, 1): trust 1/sqrt(2), rescaled to (1, 1)/sqrt(2).
    root = {"w": np.array([1, 0], np.float32)}
    results = _vectors([[2, 0], [0, 3], [-5, 0], [1, 1]])
    s = 1 / math.sqrt(2)

    # Execute
    outcome = fltrust_with_outcome(results, root=root)

    # Assert
    expected = (np.array([1, 0]) + s * np.array([s, s])) / (1 + s)
    np.testing.assert_allclose(outcome.arrays["w"], expected, rtol=1e-6)
    assert outcome.selected == (0, 3)
    assert outcome.flagged == (1, 2)
    assert outcome.weights[1] == 0.0 and outcome.weights[2] == 0.0
    assert outcome.scores == pytest.approx((1.0, 0.0, 0.0, s))


def test_fltrust_with_reference_returns_full_weights() -> None:
    # Prepare: the same steps as full weights around reference (10, 10)
    ref = {"w": np.array([10, 10], np.float32)}
    root = {"w": np.array([11, 10], np.float32)}
    results = _vectors([[12, 10], [5, 10]])

    # Execute
    out = robust.fltrust(results, root=root, reference=ref)

    # Assert: only (2, 0) is trusted, rescaled to |root step| = 1
    np.testing.assert_allclose(out["w"], [11.0, 10.0])


def test_fltrust_gives_no_step_when_nothing_is_trusted() -> None:
    # Prepare
    root = {"w": np.array([1, 0], np.float32)}

    # Execute
    outcome = fltrust_with_outcome(_vectors([[-1, 0], [-2, 1]]), root=root)

    # Assert
    np.testing.assert_array_equal(outcome.arrays["w"], [0.0, 0.0])
    assert outcome.selected == ()
    assert outcome.verdicts() == ("excluded", "excluded")


def test_fltrust_refuses_a_zero_root_update() -> None:
    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        fltrust_with_outcome(_vectors([[1, 0]]), root={"w": np.zeros(2, np.float32)})
    assert info.value.reason == "invalid_root_update"


# -- dtypes and layout ----------------------------------------------------------------------------


def test_rules_keep_order_and_dtypes_and_round_integer_tensors() -> None:
    # Prepare: a float64 tensor that float32 would round, and an integer counter
    results = [
        ({"b": np.array([1.0 + 1e-12 * i]), "steps": np.array(i, np.int64), "w": np.full((2, 2), i, np.float32)}, 1)
        for i in range(5)
    ]

    # Execute
    out = median(results)

    # Assert
    assert list(out) == ["b", "steps", "w"]
    assert out["b"].dtype == np.float64 and out["b"][0] == 1.0 + 2e-12
    assert out["steps"].dtype == np.int64 and out["steps"].shape == () and int(out["steps"]) == 2
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 2)


def test_rules_refuse_inconsistent_results_and_bad_weights() -> None:
    # Prepare
    mixed = [({"w": np.ones(2, np.float32)}, 1), ({"w": np.ones(3, np.float32)}, 1)]

    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        median(mixed)
    assert info.value.reason == "inconsistent_results"
    with pytest.raises(AggregationError) as info:
        median([])
    assert info.value.reason == "no_updates"
    with pytest.raises(UpdateRejected) as rejected:
        median([({"w": np.ones(2, np.float32)}, -1)])
    assert rejected.value.reason == "invalid_num_examples"


# -- invariants (hypothesis) ----------------------------------------------------------------------

HONEST = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
_BIG = float(np.float32(1e30))
ANY_FINITE = st.floats(min_value=-_BIG, max_value=_BIG, allow_nan=False, width=32)


@st.composite
def honest_and_byzantine(draw: st.DrawFn, *, min_honest_over_f: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(honest h x d, byzantine f x d, f) with h >= f + min_honest_over_f."""
    f = draw(st.integers(min_value=0, max_value=3))
    h = draw(st.integers(min_value=f + min_honest_over_f, max_value=f + min_honest_over_f + 4))
    d = draw(st.integers(min_value=1, max_value=4))
    honest = np.array(draw(st.lists(st.lists(HONEST, min_size=d, max_size=d), min_size=h, max_size=h)), np.float32)
    evil = np.array(draw(st.lists(st.lists(ANY_FINITE, min_size=d, max_size=d), min_size=f, max_size=f)), np.float32)
    return honest, evil.reshape(f, d), f


def _within(out: np.ndarray, honest: np.ndarray, slack: np.ndarray | float = 0.0) -> bool:
    tol = 1e-3 * (1 + np.abs(honest).max())
    return bool(np.all(out >= honest.min(axis=0) - slack - tol) and np.all(out <= honest.max(axis=0) + slack + tol))


def _mix(honest: np.ndarray, evil: np.ndarray, seed: int) -> tuple[Results, np.ndarray]:
    rows = np.concatenate([honest, evil]) if len(evil) else honest
    order = np.random.default_rng(seed).permutation(len(rows))
    return [({"w": rows[i].copy()}, 1) for i in order], order


@settings(max_examples=60, deadline=None)
@given(case=honest_and_byzantine(min_honest_over_f=1), seed=st.integers(0, 2**16))
def test_median_stays_within_the_honest_range(case: tuple[np.ndarray, np.ndarray, int], seed: int) -> None:
    # Prepare: f < h, so the Byzantine updates are fewer than half
    honest, evil, _ = case
    results, _ = _mix(honest, evil, seed)

    # Execute
    out = median(results)["w"]

    # Assert
    assert _within(out, honest)


@settings(max_examples=60, deadline=None)
@given(case=honest_and_byzantine(min_honest_over_f=2), seed=st.integers(0, 2**16))
def test_trimmed_mean_stays_within_the_honest_range(case: tuple[np.ndarray, np.ndarray, int], seed: int) -> None:
    # Prepare: beta chosen so exactly f values are trimmed per side
    honest, evil, f = case
    n = len(honest) + f
    results, _ = _mix(honest, evil, seed)
    beta = (f + 0.5) / n

    # Execute
    out = trimmed_mean(results, beta=beta)["w"]

    # Assert
    assert math.floor(beta * n) == f
    assert _within(out, honest)


@st.composite
def clustered_and_far(draw: st.DrawFn, *, n_of_f: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Honest in [-1, 1]^d, f attackers at >= 1e3 in every coordinate; n = n_of_f(f) + extra."""
    f = draw(st.integers(min_value=0, max_value=3))
    n = n_of_f(f) + draw(st.integers(min_value=0, max_value=3))
    d = draw(st.integers(min_value=1, max_value=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    honest = rng.uniform(-1, 1, size=(n - f, d)).astype(np.float32)
    signs = rng.choice([-1.0, 1.0], size=(f, 1))
    evil = (signs * rng.uniform(1e3, 1e6, size=(f, d))).astype(np.float32)
    return honest, evil, f


@settings(max_examples=60, deadline=None)
@given(case=clustered_and_far(n_of_f=lambda f: 2 * f + 3), seed=st.integers(0, 2**16))
def test_krum_selects_an_honest_update_when_attackers_are_far(
    case: tuple[np.ndarray, np.ndarray, int], seed: int
) -> None:
    # Prepare
    honest, evil, f = case
    results, order = _mix(honest, evil, seed)

    # Execute
    outcome = krum_with_outcome(results, f=f)

    # Assert: the chosen row came from the honest block, and its values are returned exactly
    (chosen,) = outcome.selected
    assert order[chosen] < len(honest)
    np.testing.assert_array_equal(outcome.arrays["w"], results[chosen][0]["w"])


@settings(max_examples=40, deadline=None)
@given(case=clustered_and_far(n_of_f=lambda f: 4 * f + 3), seed=st.integers(0, 2**16))
def test_bulyan_stays_within_the_honest_range_when_attackers_are_far(
    case: tuple[np.ndarray, np.ndarray, int], seed: int
) -> None:
    # Prepare
    honest, evil, f = case
    results, order = _mix(honest, evil, seed)

    # Execute
    outcome = bulyan_with_outcome(results, f=f)

    # Assert
    assert all(order[i] < len(honest) for i in outcome.selected)
    assert _within(outcome.arrays["w"], honest)


@settings(max_examples=60, deadline=None)
@given(case=honest_and_byzantine(min_honest_over_f=3), seed=st.integers(0, 2**16))
def test_bulyan_stays_near_the_honest_range_whatever_the_attackers(
    case: tuple[np.ndarray, np.ndarray, int], seed: int
) -> None:
    # Prepare: n >= 4f + 3 with arbitrary attackers. Bulyan does not promise the honest range
    # itself (a Byzantine value close to the median can be averaged in), but every value it
    # averages is within one honest range-width of the selection's median, which is inside it.
    honest, evil, f = case
    needed = 4 * f + 3 - (len(honest) + f)
    if needed > 0:
        honest = np.concatenate([honest, np.repeat(honest[:1], needed, axis=0)])
    results, _ = _mix(honest, evil, seed)

    # Execute
    out = robust.bulyan(results, f=f)["w"]

    # Assert
    width = honest.max(axis=0) - honest.min(axis=0)
    assert _within(out, honest, slack=width)


def _call(rule: str, results: Results, **extra: Any) -> RuleOutcome:
    kwargs: dict[str, Any] = {"f": 1} if rule in ("krum", "multi-krum", "bulyan") else {}
    if rule == "fltrust":
        kwargs["root"] = extra.get("root", results[0][0])
    kwargs.update({k: v for k, v in extra.items() if k != "root"})
    return ROBUST_RULES_WITH_OUTCOME[rule](results, **kwargs)


@pytest.mark.parametrize("rule", sorted(ROBUST_RULES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(min_value=7, max_value=10))
def test_identical_updates_give_that_update(rule: str, seed: int, n: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    update = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    results = [({k: v.copy() for k, v in update.items()}, int(rng.integers(1, 100))) for _ in range(n)]

    # Execute
    out = _call(rule, results, root=update).arrays

    # Assert
    for name, value in update.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", sorted(ROBUST_RULES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(min_value=7, max_value=10))
def test_rules_are_permutation_invariant(rule: str, seed: int, n: int) -> None:
    # Prepare: continuous random values (no ties), a fixed root for FLTrust
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, 6)).astype(np.float32)
    root = {"a": np.ones(2, np.float32), "b": np.ones(4, np.float32)}
    results = _from_matrix(matrix)
    perm = rng.permutation(n)
    shuffled = [results[i] for i in perm]

    # Execute
    first = _call(rule, results, root=root)
    second = _call(rule, shuffled, root=root)

    # Assert: same aggregate, and the same updates selected (mapped back through the permutation)
    np.testing.assert_allclose(_flat(first.arrays), _flat(second.arrays), rtol=1e-5, atol=1e-6)
    assert sorted(int(perm[i]) for i in second.selected) == list(first.selected)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(min_value=1, max_value=8),
    bound=st.floats(min_value=1e-3, max_value=10.0),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
def test_norm_bound_output_step_is_inside_the_bound(seed: int, n: int, bound: float, scale: float) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    reference = {"a": rng.normal(size=2).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    steps = rng.normal(scale=scale, size=(n, 6)).astype(np.float32)
    results = [
        ({"a": reference["a"] + row[:2], "b": reference["b"] + row[2:]}, int(rng.integers(1, 50))) for row in steps
    ]

    # Execute
    out = robust.norm_bound(results, reference=reference, bound=bound)

    # Assert
    assert global_norm(out, reference=reference) <= bound * (1 + 1e-4) + 1e-5


def test_fltrust_gives_zero_weight_to_an_update_opposite_the_root() -> None:
    # Prepare: a big update exactly opposite the root, among three aligned ones
    rng = np.random.default_rng(1)
    root = {"w": rng.normal(size=50).astype(np.float32)}
    honest = [({"w": root["w"] * s + rng.normal(scale=0.01, size=50).astype(np.float32)}, 1) for s in (1, 2, 3)]
    evil = ({"w": -1000 * root["w"]}, 10_000)

    # Execute
    outcome = fltrust_with_outcome([*honest, evil], root=root)

    # Assert
    assert outcome.weights[3] == 0.0
    assert 3 in outcome.flagged and 3 not in outcome.selected
    assert global_norm(outcome.arrays) == pytest.approx(global_norm(root), rel=1e-3)


# -- parameter validation and too few updates -----------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "n", "params", "key", "fragment"),
    [
        ("trimmed-mean", None, {"beta": 0.5}, "aggregation.beta", "[0, 0.5)"),
        ("trimmed-mean", None, {"beta": -0.1}, "aggregation.beta", "[0, 0.5)"),
        ("krum", None, {"f": -1}, "aggregation.f", ">= 0"),
        ("krum", 5, {"f": 2}, "aggregation.f", "Krum needs n >= 2f + 3 (n=5, f=2)"),
        ("multi-krum", 7, {"f": 1, "m": 7}, "aggregation.m", "m <= n - f"),
        ("multi-krum", None, {"m": 0}, "aggregation.m", ">= 1"),
        ("bulyan", 6, {"f": 1}, "aggregation.f", "Bulyan needs n >= 4f + 3 (n=6, f=1)"),
        ("centered-clipping", None, {"tau": 0.0}, "aggregation.tau", "> 0"),
        ("centered-clipping", None, {"iterations": 0}, "aggregation.iterations", ">= 1"),
        ("norm-bound", None, {"bound": -1.0}, "aggregation.bound", "> 0"),
        ("krum", None, {"beta": 0.1}, "aggregation.beta", "not a parameter of Krum"),
        ("nope", None, {}, "aggregation.rule", "unknown robust rule"),
        ("krum", None, {"f": True}, "aggregation.f", "integer"),
    ],
)
def test_check_rule_params_names_the_config_key(
    rule: str, n: int | None, params: dict[str, object], key: str, fragment: str
) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        check_rule_params(rule, n, params)
    assert info.value.reason == "invalid_aggregation_params"
    assert info.value.message.startswith(key + ":")
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("rule", "n", "params"),
    [
        ("median", 1, {}),
        ("trimmed-mean", None, {"beta": 0.49}),
        ("trimmed-mean", 3, {"beta": 0.4}),
        ("krum", 5, {"f": 1}),
        ("multi-krum", 7, {"f": 2, "m": 5}),
        ("bulyan", 7, {"f": 1}),
        ("centered-clipping", None, {"tau": 0.5, "iterations": 2}),
        ("norm-bound", 3, {"median_multiple": 1.5}),
        ("fltrust", 1, {}),
    ],
)
def test_check_rule_params_accepts_valid_settings(rule: str, n: int | None, params: dict[str, object]) -> None:
    # Execute / Assert: no exception, and the rule's keys are the registered ones
    check_rule_params(rule, n, params)
    assert set(params) <= RULE_PARAMS[rule]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda r: krum_with_outcome(r[:4], f=1), "Krum needs at least 2f + 3 = 5 updates, got 4"),
        (lambda r: bulyan_with_outcome(r[:6], f=1), "Bulyan needs at least 4f + 3 = 7 updates, got 6"),
        (lambda r: multi_krum_with_outcome(r[:5], f=1, m=5), "m <= n - f"),
    ],
)
def test_too_few_updates_at_round_close(call: Callable[[Results], Any], fragment: str) -> None:
    # Prepare
    results = _scalars([float(i) for i in range(8)])

    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        call(results)
    assert info.value.reason == "too_few_updates"
    assert fragment in info.value.message


def test_rules_raise_config_errors_for_bad_parameters_before_counting() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        trimmed_mean(_scalars([1, 2, 3]), beta=0.7)
    assert info.value.message.startswith("aggregation.beta:")


def test_min_updates_states_each_rules_requirement() -> None:
    # Execute / Assert
    assert min_updates("krum", {"f": 2}) == 7
    assert min_updates("multi-krum", {}) == 5
    assert min_updates("bulyan", {"f": 2}) == 11
    assert min_updates("median", {}) == 1


def test_registries_cover_the_same_rules() -> None:
    # Assert
    expected = {
        "median",
        "trimmed-mean",
        "krum",
        "multi-krum",
        "bulyan",
        "centered-clipping",
        "norm-bound",
        "fltrust",
    }
    assert set(ROBUST_RULES) == set(ROBUST_RULES_WITH_OUTCOME) == set(RULE_PARAMS) == expected


def test_large_model_goes_through_column_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: force several chunks and compare with a direct numpy computation
    monkeypatch.setattr(robust, "_CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(9, 101)).astype(np.float32)
    results = _from_matrix(matrix)

    # Execute
    med = _flat(median(results))
    trimmed = _flat(trimmed_mean(results, beta=0.25))
    chosen = krum_with_outcome(results, f=2).selected[0]

    # Assert
    np.testing.assert_allclose(med, np.median(matrix, axis=0), rtol=1e-6)
    np.testing.assert_allclose(trimmed, np.sort(matrix, axis=0)[2:7].mean(axis=0), rtol=1e-5, atol=1e-6)
    dist = ((matrix[:, None, :].astype(np.float64) - matrix[None, :, :]) ** 2).sum(-1)
    scores = np.sort(dist, axis=1)[:, 1 : 9 - 2 - 2 + 1].sum(axis=1)
    assert chosen == int(np.argmin(scores))
