"""Model transport as safetensors bytes. Never pickle: loading bytes must not run code.

Layout: a standard safetensors file (8-byte little-endian header length, JSON header, raw data).
Its ``__metadata__`` carries the caller's string metadata plus one reserved key,
``qflare.order``, listing tensor names in ``state_dict`` order (safetensors itself stores them
sorted by dtype and name).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from qflare.errors import MalformedPayload
from qflare.fl.spec import ModelSpec, TensorSpec, check_finite
from qflare.types import NDArrays

__all__ = [
    "ORDER_KEY",
    "ModelSpec",
    "TensorSpec",
    "check_finite",
    "dump_arrays",
    "load_arrays",
    "sha256_hex",
]

ORDER_KEY = "qflare.order"
_MAX_HEADER = 100_000_000  # bytes of JSON header, the reference parser's own limit
_RESERVED_PREFIX = "qflare."

# safetensors dtype tag -> numpy dtype; anything else (BF16, F8, ...) is refused as malformed.
_DTYPES: dict[str, np.dtype] = {
    tag: np.dtype(code)
    for tag, code in {
        "BOOL": "?",
        "U8": "u1",
        "I8": "i1",
        "U16": "<u2",
        "I16": "<i2",
        "U32": "<u4",
        "I32": "<i4",
        "U64": "<u8",
        "I64": "<i8",
        "F16": "<f2",
        "F32": "<f4",
        "F64": "<f8",
    }.items()
}  # safetensors data is little-endian


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dump_arrays(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``arrays`` (and string ``metadata``) to safetensors bytes.

    The output is deterministic: equal arrays and metadata give equal bytes, so
    :func:`sha256_hex` of it identifies a model version.
    """
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values must be str")
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} uses the reserved prefix {_RESERVED_PREFIX!r}")
    meta[ORDER_KEY] = json.dumps(list(arrays), separators=(",", ":"))
    # np.ascontiguousarray would turn 0-d arrays into 1-d ones.
    contiguous = {name: np.array(a, order="C", copy=None) for name, a in arrays.items()}
    return _canonical_header(safetensors.numpy.save(contiguous, metadata=meta))


def _canonical_header(data: bytes) -> bytes:
    # safetensors writes __metadata__ from a Rust HashMap, in a different order on every call;
    # rewrite the header with sorted metadata so that equal inputs give equal bytes.
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)  # the data section stays 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw + data[8 + length :]


def load_arrays(
    data: bytes, spec: ModelSpec | None = None, *, copy: bool = True, check_finite_values: bool = True
) -> tuple[NDArrays, dict[str, str]]:
    """Parse safetensors bytes into ``(arrays, metadata)``.

    Arrays come back in the order of ``spec`` (or of the sender's ``state_dict`` when no spec is
    given): writable copies, or with ``copy=False`` read-only views into ``data`` (zero-copy: they
    keep ``data`` alive; ``data`` must then be ``bytes``, or is copied once). Floating tensors are
    checked for NaN/Inf unless ``check_finite_values=False``: the caller then checks them itself
    (:func:`qflare.fl.checks.parse_update` does, in its step norm's pass over the values).

    Raises
    ------
    MalformedPayload
        reason ``malformed_tensor``: the bytes are not a safetensors file we accept.
    ModelSpecMismatch
        reasons ``missing_tensor``, ``unexpected_tensor``, ``shape_mismatch``, ``dtype_mismatch``.
    NonFiniteValues
        reason ``non_finite``.
    """
    raw, metadata = _parse(data, copy=copy)
    order = _tensor_order(metadata.pop(ORDER_KEY, None), raw)
    names = list(spec) + [n for n in order if n not in spec] if spec is not None else order
    arrays: NDArrays = {name: raw[name] for name in names if name in raw}
    if spec is not None:
        spec.validate(arrays, check_finite_values=check_finite_values)
    elif check_finite_values:
        check_finite(arrays)
    return arrays, metadata


def _malformed(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="malformed_tensor")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _malformed("safetensors header names a key twice")
    return out


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(data: bytes, *, copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a safetensors file (format: 8-byte little-endian header length, UTF-8 JSON header
    of ``{name: {dtype, shape, data_offsets}}`` and ``__metadata__``, then the data section, which the
    tensors must tile exactly), checked as strictly as the reference parser, as views into ``data``
    (``copy=False``) or copies."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedPayload("model payload must be bytes", reason="malformed_tensor")
    data = bytes(data)  # immutable: the views below can never change under their reader
    if len(data) < 8:
        raise _malformed("not a safetensors payload: shorter than its header length")
    length = int.from_bytes(data[:8], "little")
    if length > _MAX_HEADER or 8 + length > len(data):
        raise _malformed("not a safetensors payload: bad header length")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _malformed("safetensors header is not an object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise MalformedPayload("safetensors __metadata__ must map str to str", reason="malformed_tensor")
    spans: list[tuple[int, int, str, np.dtype, tuple[int, ...]]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _malformed(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
        tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        dtype = _DTYPES.get(tag) if isinstance(tag, str) else None
        if dtype is None:
            raise _malformed(f"tensor {name!r}: unsupported dtype {str(tag)[:16]}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _malformed(f"tensor {name!r}: shape must be a list of non-negative ints")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _malformed(f"tensor {name!r}: data_offsets must be two non-negative ints")
        begin, end = offsets
        count = math.prod(shape)
        if end < begin or end - begin != count * dtype.itemsize:
            raise _malformed(f"tensor {name!r}: data_offsets do not match its shape and dtype")
        spans.append((begin, end, name, dtype, tuple(shape)))
    spans.sort(key=lambda s: (s[0], s[1]))
    base = 8 + length
    pos = 0
    for begin, end, name, _, _ in spans:
        if begin != pos:
            raise _malformed(f"tensor {name!r}: data overlaps another tensor or leaves a gap")
        pos = end
    if base + pos != len(data):
        raise _malformed("safetensors data section is not exactly its tensors")
    arrays: dict[str, np.ndarray] = {}
    for begin, end, name, dtype, shape in spans:
        view = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=base + begin)
        view = view.reshape(shape)
        arrays[name] = view.astype(dtype.newbyteorder("="), copy=True) if copy else view
    return arrays, dict(meta)


def _tensor_order(order_json: str | None, arrays: Mapping[str, np.ndarray]) -> list[str]:
    if order_json is None:
        return sorted(arrays)
    try:
        order = json.loads(order_json)
    except ValueError as exc:
        raise MalformedPayload(f"{ORDER_KEY} is not valid JSON", reason="malformed_tensor") from exc
    if (
        not isinstance(order, list)
        or not all(isinstance(name, str) for name in order)
        or len(set(order)) != len(order)
        or set(order) != set(arrays)
    ):
        raise MalformedPayload(f"{ORDER_KEY} does not list exactly the payload's tensors", reason="malformed_tensor")
    return order
