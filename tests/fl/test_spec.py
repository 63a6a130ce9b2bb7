"""ModelSpec: construction, canonical JSON, fingerprint, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings

from qflare.errors import MalformedPayload, ModelSpecMismatch, NonFiniteValues
from qflare.fl.spec import ModelSpec, TensorSpec

from .arrays_strategies import model_specs


def test_from_arrays_keeps_order_shapes_and_dtypes(small_arrays: dict[str, np.ndarray]) -> None:
    # Execute
    spec = ModelSpec.from_arrays(small_arrays)

    # Assert
    assert list(spec) == ["layer.weight", "bias"]
    assert spec["layer.weight"] == TensorSpec((3, 4), "float32")
    assert spec.num_parameters == 15


def test_json_is_canonical_and_fingerprint_is_its_sha256(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    spec = ModelSpec.from_arrays(small_arrays)

    # Execute
    text = spec.to_json()

    # Assert
    assert " " not in text
    assert json.loads(text)["tensors"][0] == {"dtype": "float32", "name": "layer.weight", "shape": [3, 4]}
    import hashlib

    assert spec.fingerprint() == hashlib.sha256(text.encode()).hexdigest()


def test_fingerprint_depends_on_order_and_shape(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    spec = ModelSpec.from_arrays(small_arrays)
    reordered = ModelSpec.from_arrays({k: small_arrays[k] for k in reversed(small_arrays)})
    reshaped = ModelSpec.from_arrays({**small_arrays, "bias": np.zeros(4, np.float32)})

    # Execute
    prints = {spec.fingerprint(), reordered.fingerprint(), reshaped.fingerprint()}

    # Assert
    assert len(prints) == 3
    assert spec != reordered


@settings(max_examples=50, deadline=None)
@given(spec=model_specs())
def test_json_round_trip(spec: ModelSpec) -> None:
    # Execute
    back = ModelSpec.from_json(spec.to_json())

    # Assert
    assert back == spec
    assert back.fingerprint() == spec.fingerprint()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other", "tensors": []}',
        '{"format": "qflare.modelspec/1"}',
        '{"format": "qflare.modelspec/1", "tensors": [{"name": "w", "shape": [-1], "dtype": "float32"}]}',
        '{"format": "qflare.modelspec/1", "tensors": [{"name": "w", "shape": [2], "dtype": "object"}]}',
        '{"format": "qflare.modelspec/1", "tensors": [{"name": "w", "shape": [2], "dtype": "f4"}]}',
        '{"format": "qflare.modelspec/1", "tensors": [{"name": "w", "shape": [true], "dtype": "float32"}]}',
        '{"format": "qflare.modelspec/1", "tensors": ['
        '{"name": "w", "shape": [1], "dtype": "float32"}, {"name": "w", "shape": [1], "dtype": "float32"}]}',
    ],
)
def test_from_json_rejects_malformed_specs(text: str) -> None:
    # Execute / Assert
    with pytest.raises(MalformedPayload) as info:
        ModelSpec.from_json(text)
    assert info.value.reason == "malformed_spec"


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (lambda a: {"layer.weight": a["layer.weight"]}, "missing_tensor", ["'bias'"]),
        (lambda a: {**a, "extra": np.zeros(1, np.float32)}, "unexpected_tensor", ["'extra'"]),
        (lambda a: {**a, "bias": np.zeros((3, 1), np.float32)}, "shape_mismatch", ["'bias'", "[3]", "[3, 1]"]),
        (lambda a: {**a, "bias": a["bias"].astype(np.float64)}, "dtype_mismatch", ["'bias'", "float32", "float64"]),
    ],
)
def test_validate_names_the_tensor_expected_and_got(
    small_arrays: dict[str, np.ndarray], change, reason: str, words: list[str]
) -> None:
    # Prepare
    spec = ModelSpec.from_arrays(small_arrays)

    # Execute
    with pytest.raises(ModelSpecMismatch) as info:
        spec.validate(change(small_arrays))

    # Assert
    assert info.value.reason == reason
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_rejects_non_finite_values(small_arrays: dict[str, np.ndarray], bad: float) -> None:
    # Prepare
    spec = ModelSpec.from_arrays(small_arrays)
    poisoned = {**small_arrays, "layer.weight": small_arrays["layer.weight"].copy()}
    poisoned["layer.weight"][1, 2] = bad

    # Execute
    with pytest.raises(NonFiniteValues) as info:
        spec.validate(poisoned)

    # Assert
    assert info.value.reason == "non_finite"
    assert "'layer.weight'" in info.value.message
