"""Transport: safetensors bytes in and out, every refusal with its reason code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import MalformedPayload, ModelSpecMismatch, NonFiniteValues, UpdateRejected
from qflare.fl.checks import check_update_norm
from qflare.fl.serialize import ORDER_KEY, dump_arrays, load_arrays, sha256_hex
from qflare.fl.spec import ModelSpec

from .arrays_strategies import arrays_for, model_specs


def test_round_trip_keeps_values_order_and_metadata(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    spec = ModelSpec.from_arrays(small_arrays)

    # Execute
    data = dump_arrays(small_arrays, {"round": "3", "task": "digits"})
    arrays, metadata = load_arrays(data, spec)

    # Assert
    assert list(arrays) == ["layer.weight", "bias"]
    for name in small_arrays:
        np.testing.assert_array_equal(arrays[name], small_arrays[name])
        assert arrays[name].flags.writeable
    assert metadata == {"round": "3", "task": "digits"}


def test_dump_is_deterministic(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare: several metadata keys (safetensors alone emits them in a random order)
    metadata = {"round": "7", "task": "digits", "device": "edge-01", "spec": "ab12"}

    # Execute
    outputs = {dump_arrays(dict(small_arrays), dict(reversed(metadata.items()))) for _ in range(20)}

    # Assert
    assert len(outputs) == 1
    digest = sha256_hex(outputs.pop())
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_reserved_metadata_keys_are_refused(small_arrays: dict[str, np.ndarray]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="reserved"):
        dump_arrays(small_arrays, {ORDER_KEY: "[]"})


def test_plain_safetensors_without_order_loads_in_spec_order(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare: written by another safetensors producer, no qflare metadata
    data = safetensors.numpy.save(small_arrays)

    # Execute
    with_spec, _ = load_arrays(data, ModelSpec.from_arrays(small_arrays))
    without_spec, metadata = load_arrays(data)

    # Assert
    assert list(with_spec) == ["layer.weight", "bias"]
    assert list(without_spec) == sorted(small_arrays)
    assert metadata == {}


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\xff" * 8, (10**12).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]"],
)
def test_unparseable_bytes_are_malformed_tensor(data: bytes) -> None:
    # Execute / Assert
    with pytest.raises(MalformedPayload) as info:
        load_arrays(data)
    assert info.value.reason == "malformed_tensor"


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}},
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
        {"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        {"__metadata__": {ORDER_KEY: '["x"]'}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        {"__metadata__": {ORDER_KEY: "[1]"}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
    ],
)
def test_inconsistent_headers_are_malformed_tensor(header: dict) -> None:
    # Prepare
    data = _with_header(header, b"\x00" * 4)

    # Execute / Assert
    with pytest.raises(MalformedPayload) as info:
        load_arrays(data)
    assert info.value.reason == "malformed_tensor"


@pytest.mark.parametrize(
    ("sent", "reason", "words"),
    [
        (lambda a: {"layer.weight": a["layer.weight"]}, "missing_tensor", ["'bias'"]),
        (lambda a: {**a, "extra": np.ones(2, np.float32)}, "unexpected_tensor", ["'extra'"]),
        (lambda a: {**a, "bias": np.ones(4, np.float32)}, "shape_mismatch", ["'bias'", "[3]", "[4]"]),
        (lambda a: {**a, "bias": a["bias"].astype(np.float16)}, "dtype_mismatch", ["'bias'", "float32", "float16"]),
    ],
)
def test_spec_mismatch_reasons(small_arrays: dict[str, np.ndarray], sent, reason: str, words: list[str]) -> None:
    # Prepare
    data = dump_arrays(sent(small_arrays))

    # Execute
    with pytest.raises(ModelSpecMismatch) as info:
        load_arrays(data, ModelSpec.from_arrays(small_arrays))

    # Assert
    assert info.value.reason == reason
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("with_spec", [True, False])
def test_non_finite_values_are_refused_naming_the_tensor(small_arrays: dict[str, np.ndarray], with_spec: bool) -> None:
    # Prepare
    poisoned = {**small_arrays, "bias": np.array([1.0, np.inf, 0.0], np.float32)}
    spec = ModelSpec.from_arrays(small_arrays) if with_spec else None

    # Execute
    with pytest.raises(NonFiniteValues) as info:
        load_arrays(dump_arrays(poisoned), spec)

    # Assert
    assert info.value.reason == "non_finite"
    assert "'bias'" in info.value.message


def test_update_norm_bound(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    reference = {k: np.zeros_like(v) for k, v in small_arrays.items()}
    expected = float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in small_arrays.values())))

    # Execute
    unbounded = check_update_norm(small_arrays, None)
    delta = check_update_norm(small_arrays, expected + 1e-6, reference=reference)
    with pytest.raises(UpdateRejected) as info:
        check_update_norm(small_arrays, expected * 0.99, reference=reference)

    # Assert
    assert unbounded == pytest.approx(expected)
    assert delta == pytest.approx(expected)
    assert info.value.reason == "norm_exceeded"
    assert check_update_norm(small_arrays, 0.0, reference=small_arrays) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    spec=model_specs(),
    data=st.data(),
    meta=st.dictionaries(st.text(min_size=1).filter(lambda k: not k.startswith("qflare.")), st.text(), max_size=3),
)
def test_round_trip_property(spec: ModelSpec, data: st.DataObject, meta: dict[str, str]) -> None:
    # Prepare
    arrays = data.draw(arrays_for(spec))

    # Execute
    back, back_meta = load_arrays(dump_arrays(arrays, meta), spec)
    back_without_spec, _ = load_arrays(dump_arrays(arrays, meta))

    # Assert
    assert list(back) == list(spec) == list(back_without_spec)
    for name in spec:
        np.testing.assert_array_equal(back[name], arrays[name])
    assert back_meta == meta


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_only_ever_raise_malformed_payload(data: bytes) -> None:
    # Execute / Assert: parsing either succeeds or raises MalformedPayload, never anything else
    try:
        arrays, metadata = load_arrays(data)
    except MalformedPayload as exc:
        assert exc.reason == "malformed_tensor"
    else:
        assert isinstance(arrays, dict) and isinstance(metadata, dict)


@settings(max_examples=200, deadline=None)
@given(prefix_len=st.integers(min_value=0, max_value=200), flip=st.integers(min_value=0, max_value=10_000))
def test_corrupted_valid_payloads_never_crash(prefix_len: int, flip: int) -> None:
    # Prepare: a valid payload, truncated or with one byte changed
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    spec = ModelSpec.from_arrays(arrays)
    good = dump_arrays(arrays, {"round": "1"})
    position = flip % len(good)
    variants = [good[:prefix_len], good[:position] + bytes([good[position] ^ 0x5A]) + good[position + 1 :]]

    # Execute / Assert
    for data in variants:
        try:
            load_arrays(data, spec)
        except (MalformedPayload, ModelSpecMismatch, NonFiniteValues):
            pass


def test_load_without_copy_gives_read_only_views_into_the_payload() -> None:
    # Prepare
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(3, dtype=np.int64)}
    blob = dump_arrays(arrays, {"num_examples": "3"})

    # Execute
    views, meta = load_arrays(blob, ModelSpec.from_arrays(arrays), copy=False)
    copies, _ = load_arrays(blob, ModelSpec.from_arrays(arrays))

    # Assert: the same values; the views share the payload's memory and cannot be written
    for name in arrays:
        np.testing.assert_array_equal(views[name], arrays[name])
        assert np.shares_memory(views[name], np.frombuffer(blob, np.uint8))
        assert not views[name].flags.writeable
        assert copies[name].flags.writeable and not np.shares_memory(copies[name], np.frombuffer(blob, np.uint8))
    assert meta == {"num_examples": "3"}


def _with_header(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("header, data", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # overlap
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),  # gap
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)),  # trailing bytes
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),  # truncated
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),  # shape vs offsets
    ({"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, bytes(2)),  # dtype
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),  # bool dimension
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, bytes(4)),  # extra key
])
def test_zero_copy_parser_refuses_what_does_not_tile_the_data(header: dict, data: bytes) -> None:
    with pytest.raises(MalformedPayload) as info:
        load_arrays(_with_header(header, data), copy=False)
    assert info.value.reason == "malformed_tensor"


def test_duplicate_header_keys_are_refused() -> None:
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    raw = ('{"a":' + entry + ',"a":' + entry + "}").encode()
    with pytest.raises(MalformedPayload):
        load_arrays(len(raw).to_bytes(8, "little") + raw + bytes(4))


def test_chunked_norm_matches_float64_and_survives_float32_overflow() -> None:
    # Prepare: several chunks' worth of values, and a step too large for a float32 difference
    from qflare.fl.checks import l2_norm

    rng = np.random.default_rng(0)
    x = {"w": rng.standard_normal(50_000).astype(np.float32), "b": rng.standard_normal(7)}
    ref = {"w": rng.standard_normal(50_000).astype(np.float32), "b": rng.standard_normal(7)}
    huge = {"w": np.full(3, 3e38, np.float32)}
    minus = {"w": np.full(3, -3e38, np.float32)}

    # Execute
    norm = l2_norm(x, ref)
    huge_norm = l2_norm(huge, minus)

    # Assert: within float32 rounding of the float64 value; the overflowing chunk is redone in float64
    exact = np.sqrt(sum(np.sum((x[k].astype(np.float64) - ref[k]) ** 2) for k in x))
    assert norm == pytest.approx(exact, rel=1e-6)
    assert huge_norm == pytest.approx(np.sqrt(3) * 6e38, rel=1e-6)
    assert l2_norm(x) == pytest.approx(np.sqrt(sum(np.sum(x[k].astype(np.float64) ** 2) for k in x)), rel=1e-12)
