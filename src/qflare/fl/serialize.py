"""Model transport as safetensors bytes. Never pickle: loading bytes must not run code.

Layout: a standard safetensors file (8-byte little-endian header length, JSON header, raw data).
Its ``__metadata__`` carries the caller's string metadata plus one reserved key,
``qflare.order``, listing tensor names in ``state_dict`` order (safetensors itself stores them
sorted by dtype and name).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

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


def load_arrays(data: bytes, spec: ModelSpec | None = None) -> tuple[NDArrays, dict[str, str]]:
    """Parse safetensors bytes into ``(arrays, metadata)``.

    Arrays come back as writable copies in the order of ``spec`` (or of the sender's
    ``state_dict`` when no spec is given). Floating tensors are always checked for NaN/Inf.

    Raises
    ------
    MalformedPayload
        reason ``malformed_tensor``: the bytes are not a safetensors file we accept.
    ModelSpecMismatch
        reasons ``missing_tensor``, ``unexpected_tensor``, ``shape_mismatch``, ``dtype_mismatch``.
    NonFiniteValues
        reason ``non_finite``.
    """
    raw, metadata = _parse(data)
    order = _tensor_order(metadata.pop(ORDER_KEY, None), raw)
    names = list(spec) + [n for n in order if n not in spec] if spec is not None else order
    arrays: NDArrays = {name: raw[name] for name in names if name in raw}
    if spec is not None:
        spec.validate(arrays)
    else:
        check_finite(arrays)
    return arrays, metadata


def _parse(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedPayload("model payload must be bytes", reason="malformed_tensor")
    data = bytes(data)
    try:
        views = safetensors.deserialize(data)
    except Exception as exc:  # the Rust parser raises SafetensorError, but be total on hostile input
        raise MalformedPayload(f"not a safetensors payload: {exc}", reason="malformed_tensor") from exc
    arrays: dict[str, np.ndarray] = {}
    for name, view in views:
        dtype = _DTYPES.get(view["dtype"])
        if dtype is None:
            raise MalformedPayload(f"tensor {name!r}: unsupported dtype {view['dtype']}", reason="malformed_tensor")
        try:
            flat = np.frombuffer(view["data"], dtype=dtype)
            arrays[name] = flat.reshape(view["shape"]).astype(dtype.newbyteorder("="), copy=True)
        except (ValueError, TypeError) as exc:
            raise MalformedPayload(f"tensor {name!r}: {exc}", reason="malformed_tensor") from exc
    return arrays, _metadata(data)


def _metadata(data: bytes) -> dict[str, str]:
    # The header already parsed in safetensors; read __metadata__ from it (the numpy API drops it).
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise MalformedPayload(f"safetensors header is not valid JSON: {exc}", reason="malformed_tensor") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise MalformedPayload("safetensors __metadata__ must map str to str", reason="malformed_tensor")
    return dict(meta)


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
