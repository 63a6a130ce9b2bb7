"""FedAvg: the pure function, the streaming accumulator, and their invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import AggregationError, ModelSpecMismatch, NonFiniteValues, UpdateRejected
from qflare.fl.aggregate import BufferedAccumulator, FedAvgAccumulator, fedavg
from qflare.fl.spec import ModelSpec

from .arrays_strategies import arrays_for, model_specs, weights


@st.composite
def results_lists(draw: st.DrawFn) -> tuple[ModelSpec, list[tuple[dict[str, np.ndarray], int]]]:
    spec = draw(model_specs())
    n = draw(st.integers(min_value=1, max_value=6))
    return spec, [(draw(arrays_for(spec)), draw(weights)) for _ in range(n)]


def _weighted_mean(results: list[tuple[dict[str, np.ndarray], int]], name: str) -> np.ndarray:
    stacked = np.stack([a[name].astype(np.float64) for a, _ in results])
    return np.average(stacked, axis=0, weights=[float(n) for _, n in results])


def test_fedavg_weights_by_num_examples() -> None:
    # Prepare
    a = {"w": np.array([0.0, 10.0], np.float32)}
    b = {"w": np.array([4.0, 2.0], np.float32)}

    # Execute
    out = fedavg([(a, 1), (b, 3)])

    # Assert: (1*0 + 3*4)/4 = 3, (1*10 + 3*2)/4 = 4
    np.testing.assert_array_equal(out["w"], np.array([3.0, 4.0], np.float32))
    assert out["w"].dtype == np.float32


def test_fedavg_keeps_first_results_order(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    reordered = {name: small_arrays[name] for name in reversed(small_arrays)}

    # Execute
    out = fedavg([(small_arrays, 2), (reordered, 5)])

    # Assert
    assert list(out) == list(small_arrays)


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        ([], "no_updates"),
        ([({"w": np.ones(2, np.float32)}, 0), ({"w": np.ones(2, np.float32)}, 0)], "zero_weight"),
        ([({"w": np.ones(2, np.float32)}, 1), ({"w": np.ones(3, np.float32)}, 1)], "inconsistent_results"),
        ([({"w": np.ones(2, np.float32)}, 1), ({"v": np.ones(2, np.float32)}, 1)], "inconsistent_results"),
    ],
)
def test_fedavg_refuses_what_it_cannot_average(results: list, reason: str) -> None:
    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        fedavg(results)
    assert info.value.reason == reason


@pytest.mark.parametrize("bad_weight", [-1, 1.5, True, "3"])
def test_fedavg_rejects_invalid_weights(bad_weight: object) -> None:
    # Execute / Assert
    with pytest.raises(UpdateRejected) as info:
        fedavg([({"w": np.ones(2, np.float32)}, bad_weight)])  # type: ignore[list-item]
    assert info.value.reason == "invalid_num_examples"


def test_accumulator_without_updates_raises(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    acc = FedAvgAccumulator(ModelSpec.from_arrays(small_arrays))

    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        acc.result()
    assert info.value.reason == "no_updates"


def test_accumulator_with_zero_total_weight_raises(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    acc = FedAvgAccumulator(ModelSpec.from_arrays(small_arrays))
    acc.add(small_arrays, 0)

    # Execute / Assert
    with pytest.raises(AggregationError) as info:
        acc.result()
    assert info.value.reason == "zero_weight"
    assert acc.count == 1


def test_accumulator_rejects_bad_update_without_changing_state(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    acc = FedAvgAccumulator(ModelSpec.from_arrays(small_arrays))
    acc.add(small_arrays, 4)
    wrong_shape = {**small_arrays, "bias": np.zeros(5, np.float32)}
    nan_update = {**small_arrays, "bias": np.array([0, np.nan, 0], np.float32)}

    # Execute
    with pytest.raises(ModelSpecMismatch) as shape_error:
        acc.add(wrong_shape, 1)
    with pytest.raises(NonFiniteValues):
        acc.add(nan_update, 1)
    with pytest.raises(UpdateRejected):
        acc.add(small_arrays, -2)

    # Assert
    assert shape_error.value.reason == "shape_mismatch"
    assert (acc.count, acc.total_examples) == (1, 4)
    np.testing.assert_array_equal(acc.result()["bias"], small_arrays["bias"])


def test_accumulator_holds_one_running_sum_not_the_updates(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    acc = FedAvgAccumulator(ModelSpec.from_arrays(small_arrays))
    before = _array_bytes(acc)

    # Execute
    for n in range(1, 51):
        acc.add({k: v * n for k, v in small_arrays.items()}, n)

    # Assert: a float64 sum and a float32 partial sum of the model (plus fixed scratch), whatever the number
    # of clients; the exported state is a float64 sum and a float32 partial per tensor, and the partial count
    values = sum(a.size for a in small_arrays.values())
    assert _array_bytes(acc) == before <= (8 + 4) * values + 12 * FedAvgAccumulator._CHUNK
    state = acc.state()
    assert [k for k in state.arrays if not k.startswith("\x00")] == list(small_arrays)
    assert all(state.arrays[k].dtype == np.float64 for k in small_arrays)
    assert sum(a.size for a in state.arrays.values()) == 2 * values + 1
    assert (acc.count, acc.total_examples) == (50, 50 * 51 // 2)


def _array_bytes(acc: FedAvgAccumulator) -> int:
    return sum(v.nbytes for v in vars(acc).values() if isinstance(v, np.ndarray))


def _streaming_bound(results: list[tuple[dict[str, np.ndarray], int]], name: str, expected: np.ndarray) -> np.ndarray:
    """The accumulator's stated tolerance against the float64 ``fedavg``: ``FOLD + 1`` float32 roundings of
    the weighted magnitudes, plus one float32 spacing of the result (both round to float32 at the end)."""
    total = sum(n for _, n in results)
    magnitude = sum(np.abs(a[name].astype(np.float64)) * n for a, n in results) / total
    return (FedAvgAccumulator.FOLD + 1) * 2.0**-24 * magnitude + np.spacing(np.abs(expected).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(spec=model_specs(), data=st.data(), n=st.integers(min_value=1, max_value=6))
def test_fedavg_of_identical_updates_is_that_update(spec: ModelSpec, data: st.DataObject, n: int) -> None:
    # Prepare
    arrays = data.draw(arrays_for(spec))
    counts = data.draw(st.lists(weights, min_size=n, max_size=n))
    acc = FedAvgAccumulator(spec)

    # Execute
    batch = fedavg([(arrays, c) for c in counts])
    for c in counts:
        acc.add(arrays, c)
    streamed = acc.result()

    # Assert: exact for the float64 fedavg; within the stated tolerance for the float32-partial stream
    for name in spec:
        np.testing.assert_array_equal(batch[name], arrays[name])
        bound = _streaming_bound([(arrays, c) for c in counts], name, batch[name])
        assert np.all(np.abs(streamed[name].astype(np.float64) - batch[name]) <= bound)


@settings(max_examples=60, deadline=None)
@given(case=results_lists(), data=st.data())
def test_streaming_equals_batch_and_weighted_mean_in_any_order(case: tuple, data: st.DataObject) -> None:
    # Prepare
    spec, results = case
    shuffled = data.draw(st.permutations(results))
    acc = FedAvgAccumulator(spec)

    # Execute
    batch = fedavg(results)
    for arrays, n in shuffled:
        acc.add(arrays, n)
    streamed = acc.result()

    # Assert
    assert list(streamed) == list(spec)
    for name in spec:
        expected = _weighted_mean(results, name)
        np.testing.assert_allclose(batch[name], expected, rtol=1e-6, atol=1e-6)
        bound = _streaming_bound(results, name, batch[name])
        assert np.all(np.abs(streamed[name].astype(np.float64) - batch[name].astype(np.float64)) <= bound)
        assert streamed[name].dtype == np.float32
    assert acc.total_examples == sum(n for _, n in results)


@settings(max_examples=30, deadline=None)
@given(case=results_lists())
def test_buffered_accumulator_applies_the_pure_rule(case: tuple) -> None:
    # Prepare
    spec, results = case
    acc = BufferedAccumulator(spec, fedavg)

    # Execute
    for arrays, n in results:
        acc.add(arrays, n)

    # Assert
    expected = fedavg(results)
    out = acc.result()
    for name in spec:
        np.testing.assert_array_equal(out[name], expected[name])


@pytest.mark.parametrize("clients", [1, 7, 8, 9, 33])
def test_streaming_matches_float64_fedavg_on_many_updates(clients: int) -> None:
    # Prepare: more updates than one float32 partial sum holds, mixed dtypes, checkpoint in the middle
    rng = np.random.default_rng(clients)
    results = [({"w": rng.standard_normal((40, 50)).astype(np.float32), "b": rng.standard_normal(70),
                 "n": np.array(rng.integers(0, 100), np.int64)}, int(rng.integers(1, 10_000_000)))
               for _ in range(clients)]
    spec = ModelSpec.from_arrays(results[0][0])
    acc = FedAvgAccumulator(spec)

    # Execute
    for i, (arrays, n) in enumerate(results):
        acc.add(arrays, n)
        if i == clients // 2:
            acc = FedAvgAccumulator(spec).from_state(acc.state())
    streamed = acc.result()

    # Assert: float64 and int tensors as exact as fedavg's float64 sum; float32 within the stated bound
    expected = fedavg(results)
    np.testing.assert_allclose(streamed["b"], expected["b"], rtol=1e-12, atol=1e-12)
    assert streamed["n"] == expected["n"] and streamed["n"].dtype == np.int64
    bound = _streaming_bound(results, "w", expected["w"])
    assert np.all(np.abs(streamed["w"].astype(np.float64) - expected["w"]) <= bound)


def test_streaming_state_is_exact_across_a_checkpoint() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    results = [({"w": rng.standard_normal(1000).astype(np.float32)}, int(rng.integers(1, 500)))
               for _ in range(2 * FedAvgAccumulator.FOLD + 5)]  # two folds, checkpoints at a full partial sum
    spec = ModelSpec.from_arrays(results[0][0])
    straight, restored = FedAvgAccumulator(spec), FedAvgAccumulator(spec)

    # Execute: the same updates, one accumulator rebuilt from a sealed-checkpoint-like state after each
    for arrays, n in results:
        straight.add(arrays, n)
        restored.add(arrays, n)
        restored = FedAvgAccumulator(spec).from_state(restored.state())

    # Assert: bit for bit (the partial sum travels in the state; a checkpoint does not fold it early)
    np.testing.assert_array_equal(straight.result()["w"], restored.result()["w"])


def test_the_stated_bound_is_two_to_the_minus_20() -> None:
    # The docstring's bound, (FOLD + 1) float32 roundings of the weighted magnitudes, is no looser than the
    # 2 * 8 * 2**-24 stated when FOLD was 8
    assert (FedAvgAccumulator.FOLD + 1) * 2.0**-24 <= 2.0**-20


@pytest.mark.parametrize("clients", [1, 14, 15, 16, 31, 46])
def test_streaming_is_float32_groups_folded_in_float64_bit_for_bit(clients: int) -> None:
    # Prepare: several chunks and a tail, a float64 tensor between two float32 ones
    fold = FedAvgAccumulator.FOLD
    size = 2 * FedAvgAccumulator._CHUNK + 11
    rng = np.random.default_rng(clients)
    results = [({"a": rng.standard_normal(size).astype(np.float32), "d": rng.standard_normal(3),
                 "b": (rng.standard_normal(50) * 1e3).astype(np.float32)}, int(rng.integers(1, 1 << 20)))
               for _ in range(clients)]
    spec = ModelSpec.from_arrays(results[0][0])
    acc = FedAvgAccumulator(spec)

    # Execute
    for arrays, n in results:
        acc.add(arrays, n)
    streamed = acc.result()

    # Assert: each group of FOLD updates is the float32 recursive sum of fl(n * x), the groups are added in
    # float64 in order, the last (unfolded) group added at the end: the fused fold changes no bit
    total = sum(n for _, n in results)
    for name in ("a", "b"):
        running = np.zeros(results[0][0][name].size)
        partial = np.zeros_like(running, dtype=np.float32)
        for i, (arrays, n) in enumerate(results):
            if i and i % fold == 0:
                running = running + partial.astype(np.float64)
                partial = np.zeros_like(partial)
            partial = partial + arrays[name].reshape(-1) * np.float32(n)
        want = ((running + partial.astype(np.float64)) / total).astype(np.float32)
        np.testing.assert_array_equal(streamed[name].reshape(-1), want)


def test_a_weight_not_exact_in_float32_mid_group_folds_and_stays_exact_across_checkpoints() -> None:
    # Prepare: a weight >= 2**24 (summed in float64) between float32-exact ones, a checkpoint after every add
    rng = np.random.default_rng(9)
    weights = [3, 500, (1 << 25) + 1, 7, *range(1, 2 * FedAvgAccumulator.FOLD + 4)]
    results = [({"w": rng.standard_normal(300).astype(np.float32)}, n) for n in weights]
    spec = ModelSpec.from_arrays(results[0][0])
    straight, restored = FedAvgAccumulator(spec), FedAvgAccumulator(spec)

    # Execute
    for arrays, n in results:
        straight.add(arrays, n)
        restored.add(arrays, n)
        restored = FedAvgAccumulator(spec).from_state(restored.state(copy=False))

    # Assert: bit for bit across checkpoints, and fedavg's within the stated bound
    np.testing.assert_array_equal(straight.result()["w"], restored.result()["w"])
    expected = fedavg(results)
    bound = _streaming_bound(results, "w", expected["w"])
    assert np.all(np.abs(straight.result()["w"].astype(np.float64) - expected["w"]) <= bound)


def test_streaming_over_several_chunks_matches_fedavg_and_refuses_a_nan_in_the_last_chunk() -> None:
    # Prepare: tensors of several _add chunks and a short tail, a float64 tensor as long, two folds; the
    # poisoned update comes when the partial sum is full (a good one would fold it first)
    size = 3 * FedAvgAccumulator._CHUNK + 7
    fold = FedAvgAccumulator.FOLD
    rng = np.random.default_rng(5)
    results = [({"w": rng.standard_normal(size).astype(np.float32), "d": rng.standard_normal(size)},
                int(rng.integers(1, 500))) for _ in range(2 * fold + 3)]
    spec = ModelSpec.from_arrays(results[0][0])
    acc = FedAvgAccumulator(spec)
    for arrays, n in results[:fold]:
        acc.add(arrays, n)
    before = acc.state()
    poisoned = {"w": results[fold][0]["w"].copy(), "d": results[fold][0]["d"].copy()}
    poisoned["w"][-1] = np.nan  # the last value of the last chunk

    # Execute
    with pytest.raises(NonFiniteValues):
        acc.add(poisoned, 3)
    after = acc.state()
    for arrays, n in results[fold:]:
        acc.add(arrays, n)
    streamed = acc.result()

    # Assert: the refusal left the state bit for bit; the result is fedavg's within the stated bound
    assert (after.count, after.total_examples) == (before.count, before.total_examples)
    for key in before.arrays:
        np.testing.assert_array_equal(after.arrays[key], before.arrays[key])
    expected = fedavg(results)
    np.testing.assert_allclose(streamed["d"], expected["d"], rtol=1e-12, atol=1e-12)
    bound = _streaming_bound(results, "w", expected["w"])
    assert np.all(np.abs(streamed["w"].astype(np.float64) - expected["w"]) <= bound)


@pytest.mark.parametrize("kind", ["fedavg", "buffered"])
def test_state_without_copies_is_the_same_state_read_only(kind: str) -> None:
    # Prepare: a partial sum half full, mixed dtypes
    rng = np.random.default_rng(3)
    results = [({"w": rng.standard_normal(300).astype(np.float32), "b": rng.standard_normal(5)},
                int(rng.integers(1, 50))) for _ in range(5)]
    spec = ModelSpec.from_arrays(results[0][0])
    acc = FedAvgAccumulator(spec) if kind == "fedavg" else BufferedAccumulator(spec, fedavg)
    for arrays, n in results:
        acc.add(arrays, n)

    # Execute
    copied, viewed = acc.state(), acc.state(copy=False)

    # Assert: equal state; the views cannot be written; a rebuilt accumulator gives the same result bit for bit
    assert (viewed.count, viewed.total_examples) == (copied.count, copied.total_examples)
    assert viewed.weights == copied.weights
    assert set(viewed.arrays) == set(copied.arrays)
    for key, value in viewed.arrays.items():
        np.testing.assert_array_equal(value, copied.arrays[key])
        assert value.dtype == copied.arrays[key].dtype
        if value.ndim:
            assert not value.flags.writeable and copied.arrays[key].flags.writeable
    rebuilt = (FedAvgAccumulator(spec) if kind == "fedavg" else BufferedAccumulator(spec, fedavg)).from_state(viewed)
    for name, value in rebuilt.result().items():
        np.testing.assert_array_equal(value, acc.result()[name])


def test_a_subclass_that_exports_more_gets_its_export_even_without_copies(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare: a rule built on the streaming sum that adds a tensor of its own to the state
    class WithExtra(FedAvgAccumulator):
        def _export(self) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
            arrays, weights = super()._export()
            return {**arrays, "\x00extra": np.ones(2)}, weights

    acc = WithExtra(ModelSpec.from_arrays(small_arrays))
    acc.add(small_arrays, 3)

    # Execute
    viewed = acc.state(copy=False)

    # Assert: its own _export, not the parent's views without the extra tensor
    assert "\x00extra" in viewed.arrays
    assert set(viewed.arrays) == set(acc.state().arrays)
