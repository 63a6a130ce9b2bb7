"""Update validation: the step norm's pass is also the NaN/Inf check (``step_norm_checked``, ``parse_update``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import MalformedPayload, NonFiniteValues, UpdateRejected
from qflare.fl.checks import _NORM_CHUNK, l2_norm, parse_update, step_norm_checked
from qflare.fl.serialize import dump_arrays
from qflare.fl.spec import ModelSpec, check_finite

# Several norm chunks per tensor, and a tail shorter than a chunk.
_BIG = 3 * _NORM_CHUNK + 5


def _update(dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"w": rng.standard_normal(_BIG).astype(dtype), "b": rng.standard_normal(7).astype(dtype)}


def _reference(update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, 0.25) for k, v in update.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("where", [0, _NORM_CHUNK, _BIG - 1])  # first chunk, a middle one, the last value
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_anywhere_is_refused_with_check_finites_message(dtype: str, where: int, bad: float) -> None:
    # Prepare
    update = _update(dtype)
    update["w"][where] = bad
    with pytest.raises(NonFiniteValues) as separate:
        check_finite(update)

    # Execute
    with pytest.raises(NonFiniteValues) as fused:
        step_norm_checked(update, _reference(update))
    with pytest.raises(NonFiniteValues) as fused_no_reference:
        step_norm_checked(update)

    # Assert: the same refusal as the separate check gave
    for err in (fused.value, fused_no_reference.value):
        assert err.reason == "non_finite"
        assert err.message == separate.value.message == "tensor 'w' holds 1 NaN/Inf value(s)"


def test_the_first_non_finite_tensor_in_order_is_named_with_its_count() -> None:
    # Prepare: NaN in the last value of two tensors; "w" comes first
    update = _update()
    update["w"][-3:] = np.nan
    update["b"][-1] = np.inf

    # Execute
    with pytest.raises(NonFiniteValues) as err:
        step_norm_checked(update, _reference(update))

    # Assert
    assert err.value.message == "tensor 'w' holds 3 NaN/Inf value(s)"


def test_finite_values_whose_squares_overflow_are_not_called_non_finite() -> None:
    # Prepare: float64 values of 1e200 square to inf, but are finite; a float32 step that overflows float32
    huge = {"w": np.full(_BIG, 1e200, np.float64)}
    wide = {"w": np.full(3, 3e38, np.float32)}
    minus = {"w": np.full(3, -3e38, np.float32)}

    # Execute
    norm = step_norm_checked(huge)
    wide_norm = step_norm_checked(wide, minus)

    # Assert: as l2_norm (an infinite norm, which a bound then refuses), not a NaN/Inf refusal
    assert norm == l2_norm(huge) == float("inf")
    assert wide_norm == l2_norm(wide, minus) == pytest.approx(np.sqrt(3) * 6e38, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 3 * _NORM_CHUNK),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["float32", "float64", "float16", "int32"]),
    with_reference=st.booleans(),
)
def test_the_checked_norm_is_l2_norm_bit_for_bit(size: int, seed: int, dtype: str, with_reference: bool) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    update = {"a": (rng.standard_normal(size) * 10).astype(dtype), "b": (rng.standard_normal(3) * 10).astype(dtype)}
    reference = {k: (rng.standard_normal(v.shape) * 10).astype(dtype) for k, v in update.items()}
    ref = reference if with_reference else None

    # Execute / Assert
    assert step_norm_checked(update, ref) == l2_norm(update, ref)


def _payload(update: dict[str, np.ndarray], num_examples: str = "5") -> bytes:
    return dump_arrays(update, {"num_examples": num_examples})


def test_parse_update_refuses_a_nan_in_the_last_value_with_or_without_a_bound() -> None:
    # Prepare
    update = _update()
    update["b"][-1] = np.nan
    spec = ModelSpec.from_arrays(update)
    ref = _reference(update)

    # Execute / Assert: with a reference, with only a bound, with neither (the separate check)
    for max_norm, reference in ((None, ref), (1e9, None), (None, None)):
        with pytest.raises(NonFiniteValues) as err:
            parse_update(_payload(update), spec, max_norm=max_norm, reference=reference)
        assert err.value.message == "tensor 'b' holds 1 NaN/Inf value(s)"


def test_parse_update_keeps_its_order_of_refusals() -> None:
    # Prepare: a NaN and a bad num_examples; a huge step and a bad num_examples
    nan = _update()
    nan["w"][-1] = np.nan
    big = {k: v * 1000 for k, v in _update().items()}
    spec = ModelSpec.from_arrays(nan)
    ref = _reference(nan)

    # Execute / Assert: the values are judged before the metadata, the metadata before the norm bound
    with pytest.raises(NonFiniteValues):
        parse_update(_payload(nan, "lots"), spec, max_norm=1.0, reference=ref)
    with pytest.raises(MalformedPayload) as meta:
        parse_update(_payload(big, "lots"), spec, max_norm=1.0, reference=ref)
    with pytest.raises(UpdateRejected) as bound:
        parse_update(_payload(big), spec, max_norm=1.0, reference=ref)
    assert meta.value.reason == "bad_num_examples"
    assert bound.value.reason == "norm_exceeded"


def test_parse_update_norm_is_the_step_norm() -> None:
    # Prepare
    update = _update()
    spec = ModelSpec.from_arrays(update)
    ref = _reference(update)
    expected = l2_norm(update, ref)

    # Execute
    parsed = parse_update(_payload(update), spec, max_norm=expected, reference=ref)

    # Assert: a step exactly at the bound passes; its norm is l2_norm's
    assert parsed.norm == expected
    assert parsed.num_examples == 5
    np.testing.assert_array_equal(parsed.arrays["w"], update["w"])
