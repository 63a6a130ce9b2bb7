"""What a model's state looks like: tensor names, shapes and dtypes, in ``state_dict`` order.

A :class:`ModelSpec` is the contract between the server, the enclave and the edge nodes. Every
update is checked against it before it is accepted, and its :meth:`ModelSpec.fingerprint` is what a
round task pins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qflare.errors import MalformedPayload, ModelSpecMismatch, NonFiniteValues
from qflare.types import NDArrays

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SPEC_FORMAT", "ModelSpec", "TensorSpec", "check_finite"]

SPEC_FORMAT = "qflare.modelspec/1"
_NUMERIC_KINDS = frozenset("biuf")  # bool, signed, unsigned, float


@dataclass(frozen=True)
class TensorSpec:
    """Shape and numpy dtype name (``"float32"``) of one tensor."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


class ModelSpec(Mapping[str, TensorSpec]):
    """Ordered description of a model's tensors.

    Parameters
    ----------
    tensors:
        Tensor name -> :class:`TensorSpec`, in ``state_dict`` order. The order is part of the spec
        (and of its fingerprint).

    Examples
    --------
    >>> spec = ModelSpec.from_arrays({"w": np.zeros((2, 3), np.float32)})
    >>> spec["w"]
    TensorSpec(shape=(2, 3), dtype='float32')
    """

    def __init__(self, tensors: Mapping[str, TensorSpec]) -> None:
        self._tensors: dict[str, TensorSpec] = dict(tensors)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ModelSpec:
        """The spec that ``arrays`` satisfy."""
        return cls({name: TensorSpec(tuple(int(d) for d in a.shape), a.dtype.name) for name, a in arrays.items()})

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelSpec:
        """The spec of ``model.state_dict()`` as :func:`qflare.fl.train.get_arrays` exports it."""
        # Imported here so that the numpy-only parts of qflare.fl never import torch.
        from qflare.fl.train import model_spec

        return model_spec(model)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse :meth:`to_json` output; raises ``MalformedPayload`` on anything else."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedPayload(f"model spec is not valid JSON: {exc}", reason="malformed_spec") from exc
        if not isinstance(doc, dict) or doc.get("format") != SPEC_FORMAT:
            raise MalformedPayload(f"model spec must be an object with format {SPEC_FORMAT!r}", reason="malformed_spec")
        entries = doc.get("tensors")
        if not isinstance(entries, list):
            raise MalformedPayload("model spec has no 'tensors' list", reason="malformed_spec")
        tensors: dict[str, TensorSpec] = {}
        for entry in entries:
            name, spec = _parse_entry(entry)
            if name in tensors:
                raise MalformedPayload(f"model spec names tensor {name!r} twice", reason="malformed_spec")
            tensors[name] = spec
        return cls(tensors)

    # -- serialisation ------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, tensors as an ordered list."""
        doc = {
            "format": SPEC_FORMAT,
            "tensors": [{"name": name, "shape": list(t.shape), "dtype": t.dtype} for name, t in self._tensors.items()],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of :meth:`to_json`; equal specs have equal fingerprints."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    # -- validation ---------------------------------------------------------------------------

    def validate(self, arrays: Mapping[str, np.ndarray], *, check_finite_values: bool = True) -> None:
        """Raise unless ``arrays`` has exactly these tensors, shapes and dtypes (and finite values).

        Raises
        ------
        ModelSpecMismatch
            reason ``missing_tensor``, ``unexpected_tensor``, ``shape_mismatch`` or ``dtype_mismatch``.
        NonFiniteValues
            reason ``non_finite`` when a floating tensor holds NaN or Inf.
        """
        for name in self._tensors:
            if name not in arrays:
                raise ModelSpecMismatch(f"tensor {name!r} is missing", reason="missing_tensor")
        for name in arrays:
            if name not in self._tensors:
                raise ModelSpecMismatch(f"tensor {name!r} is not in the model spec", reason="unexpected_tensor")
        for name, expected in self._tensors.items():
            got = arrays[name]
            if tuple(got.shape) != expected.shape:
                raise ModelSpecMismatch(
                    f"tensor {name!r}: expected shape {list(expected.shape)}, got {list(got.shape)}",
                    reason="shape_mismatch",
                )
            if got.dtype.name != expected.dtype:
                raise ModelSpecMismatch(
                    f"tensor {name!r}: expected dtype {expected.dtype}, got {got.dtype.name}",
                    reason="dtype_mismatch",
                )
        if check_finite_values:
            check_finite(arrays)

    # -- Mapping protocol ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> TensorSpec:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSpec):
            return NotImplemented
        # Order matters: it is the state_dict order.
        return list(self._tensors.items()) == list(other._tensors.items())

    def __hash__(self) -> int:
        return hash(tuple(self._tensors.items()))

    def __repr__(self) -> str:
        return f"ModelSpec({len(self)} tensors, {self.num_parameters} values, {self.fingerprint()[:12]})"

    @property
    def num_parameters(self) -> int:
        """Total number of elements over all tensors."""
        return sum(t.size for t in self._tensors.values())

    def zeros(self) -> NDArrays:
        """Arrays of zeros matching this spec."""
        return {name: np.zeros(t.shape, dtype=t.dtype) for name, t in self._tensors.items()}


def check_finite(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise ``NonFiniteValues`` (reason ``non_finite``) naming the first tensor with NaN or Inf."""
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise NonFiniteValues(f"tensor {name!r} holds {bad} NaN/Inf value(s)", reason="non_finite")


def _parse_entry(entry: Any) -> tuple[str, TensorSpec]:
    if not isinstance(entry, dict):
        raise MalformedPayload("model spec tensor entry is not an object", reason="malformed_spec")
    name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
    if not isinstance(name, str) or not name:
        raise MalformedPayload("model spec tensor entry has no name", reason="malformed_spec")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MalformedPayload(f"tensor {name!r}: shape must be a list of non-negative ints", reason="malformed_spec")
    if not isinstance(dtype, str):
        raise MalformedPayload(f"tensor {name!r}: dtype must be a string", reason="malformed_spec")
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise MalformedPayload(f"tensor {name!r}: unknown dtype {dtype!r}", reason="malformed_spec") from exc
    if parsed.kind not in _NUMERIC_KINDS or parsed.name != dtype:
        raise MalformedPayload(f"tensor {name!r}: dtype {dtype!r} is not a numeric dtype name", reason="malformed_spec")
    return name, TensorSpec(tuple(shape), dtype)
