"""Update validation: parse, check against the spec, metadata bounds, bounded norm.

:func:`parse_update` is the one validation function: the in-process backend and the enclave both call
it (the enclave must not load the server package, which is not measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qflare.errors import MalformedPayload, ModelSpecMismatch, UpdateRejected
from qflare.fl.serialize import load_arrays
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = [
    "MAX_EXAMPLES_PER_UPDATE",
    "ParsedUpdate",
    "check_update_norm",
    "l2_norm",
    "parse_update",
    "parse_update_metadata",
]

MAX_EXAMPLES_PER_UPDATE = 10_000_000


def l2_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None = None) -> float:
    """Global L2 norm over all tensors of ``arrays``, or of ``arrays - reference`` when given.

    Computed in float64, one tensor at a time, so no flattened copy of the model is made.
    """
    if reference is not None and set(reference) != set(arrays):
        missing = sorted(set(reference) ^ set(arrays))
        raise ModelSpecMismatch(f"update and reference differ in tensors: {missing}", reason="missing_tensor")
    total = 0.0
    for name, array in arrays.items():
        values = np.asarray(array, dtype=np.float64)
        if reference is not None:
            values = values - np.asarray(reference[name], dtype=np.float64)
        total += float(np.dot(values.ravel(), values.ravel()))
    return math.sqrt(total)


def check_update_norm(
    update: Mapping[str, np.ndarray],
    max_norm: float | None,
    *,
    reference: Mapping[str, np.ndarray] | None = None,
) -> float:
    """Return the update's L2 norm; raise ``UpdateRejected`` (``norm_exceeded``) above ``max_norm``.

    Parameters
    ----------
    update:
        The client's arrays (full weights or a delta).
    max_norm:
        The bound, or ``None`` for no bound (the norm is still computed and returned).
    reference:
        When given (usually the global model the client started from), the norm of
        ``update - reference`` is checked: that is the size of the client's step.
    """
    norm = l2_norm(update, reference)
    if max_norm is not None and not norm <= max_norm:
        raise UpdateRejected(f"update L2 norm {norm:.6g} exceeds the bound {max_norm:.6g}", reason="norm_exceeded")
    return norm


def parse_update_metadata(meta: Mapping[str, str]) -> tuple[int, float | None]:
    """``num_examples`` (required, 1..10,000,000) and ``train_loss`` (optional, finite)."""
    raw = meta.get("num_examples")
    if raw is None:
        raise MalformedPayload("update metadata lacks num_examples", reason="missing_num_examples")
    try:
        num = int(raw)
    except ValueError:
        raise MalformedPayload(f"num_examples is not an integer: {raw[:32]!r}", reason="bad_num_examples") from None
    if not 0 < num <= MAX_EXAMPLES_PER_UPDATE:
        raise UpdateRejected(f"num_examples out of range: {num}", reason="bad_num_examples")
    loss: float | None = None
    if "train_loss" in meta:
        try:
            loss = float(meta["train_loss"])
        except ValueError:
            raise MalformedPayload("train_loss is not a number", reason="bad_train_loss") from None
        if not math.isfinite(loss):
            raise UpdateRejected("train_loss is not finite", reason="bad_train_loss")
    return num, loss


@dataclass(frozen=True)
class ParsedUpdate:
    """A validated update's tensors and metadata; ``norm`` is its step's L2 norm from the base model."""

    arrays: NDArrays
    num_examples: int
    train_loss: float | None
    norm: float | None = None


def parse_update(
    payload: bytes, spec: ModelSpec, *, max_norm: float | None, reference: NDArrays | None
) -> ParsedUpdate:
    """Parse and validate one update (raises an ``InvalidInput`` error).

    Parameters
    ----------
    payload:
        The update's safetensors bytes.
    spec:
        The round's model spec: names, shapes, dtypes; values must be finite.
    max_norm:
        Refuse an update whose step from ``reference`` is longer than this (``None``: no bound).
    reference:
        The round's base model; when given, the step's norm is computed (and bounded by ``max_norm``).
    """
    arrays, meta = load_arrays(payload, spec)
    num, loss = parse_update_metadata(meta)
    norm = None
    if reference is not None:
        # Bound the change the update makes to the global model, not the size of the weights.
        norm = check_update_norm(arrays, max_norm, reference=reference)
    elif max_norm is not None:
        norm = check_update_norm(arrays, max_norm)
    return ParsedUpdate(arrays=arrays, num_examples=num, train_loss=loss, norm=norm)
