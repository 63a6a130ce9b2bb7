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
from qflare.fl.spec import ModelSpec, check_finite
from qflare.types import NDArrays

__all__ = [
    "MAX_EXAMPLES_PER_UPDATE",
    "ParsedUpdate",
    "check_update_norm",
    "l2_norm",
    "parse_update",
    "parse_update_metadata",
    "step_norm_checked",
]

MAX_EXAMPLES_PER_UPDATE = 10_000_000


_NORM_CHUNK = 8192
"""Elements per step of :func:`l2_norm`: its scratch stays in L1, and BLAS runs a dot this short on one
thread (OpenBLAS spreads longer ones over threads, which costs more than the dot on a loaded machine)."""


def l2_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None = None) -> float:
    """Global L2 norm over all tensors of ``arrays``, or of ``arrays - reference`` when given.

    Summed in float64, a cache-sized chunk at a time into reused scratch buffers, so neither a
    flattened nor a float64 copy of the model is made. Between two float32 tensors the difference is
    taken in float32 (one rounding per value, relative 2**-24) and squared in float64; a chunk whose
    float32 difference overflows is taken again in float64.
    """
    return _l2_norm(arrays, reference, reject_non_finite=False)


def _l2_norm(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None, *, reject_non_finite: bool
) -> float:
    """:func:`l2_norm`; with ``reject_non_finite`` it is also the NaN/Inf check of ``arrays`` (same pass).

    A NaN or Inf in ``arrays`` makes its chunk's sum of squares non-finite (squares are >= 0, so
    nothing cancels it, and the reference is finite or itself non-finite), so only such a chunk is
    looked at again, value by value: a non-finite value raises ``NonFiniteValues`` naming its tensor
    (the message :func:`~qflare.fl.spec.check_finite` gives), a finite one whose square overflowed
    counts as before (the norm is then infinite). Real floating tensors only: other inexact dtypes
    (complex) get the separate check first, in the same tensor order.
    """
    if reference is not None and set(reference) != set(arrays):
        missing = sorted(set(reference) ^ set(arrays))
        raise ModelSpecMismatch(f"update and reference differ in tensors: {missing}", reason="missing_tensor")
    total = 0.0
    t64 = np.empty(_NORM_CHUNK, dtype=np.float64)
    t32 = np.empty(_NORM_CHUNK, dtype=np.float32)
    for name, array in arrays.items():
        x = np.asarray(array).reshape(-1)
        r = None if reference is None else np.asarray(reference[name]).reshape(-1)
        check = reject_non_finite and x.dtype.kind == "f"
        if reject_non_finite and x.dtype.kind == "c":
            check_finite({name: array})
        fast = x.dtype == np.float32 and (r is None or r.dtype == np.float32)
        for lo in range(0, x.size, _NORM_CHUNK):
            hi = min(lo + _NORM_CHUNK, x.size)
            t = t64[: hi - lo]
            if fast:
                if r is None:
                    np.copyto(t, x[lo:hi])
                else:
                    d = t32[: hi - lo]
                    np.subtract(x[lo:hi], r[lo:hi], out=d)
                    np.copyto(t, d)
                part = float(np.dot(t, t))
                if math.isfinite(part):
                    total += part
                    continue
            np.copyto(t, x[lo:hi], casting="unsafe")
            if r is not None:
                np.subtract(t, r[lo:hi], out=t, casting="unsafe")
            part = float(np.dot(t, t))
            if check and not math.isfinite(part) and not np.isfinite(x[lo:hi]).all():
                check_finite({name: array})  # raises, counting the tensor's NaN/Inf values
            total += part
    return math.sqrt(total)


def step_norm_checked(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None = None) -> float:
    """:func:`l2_norm` of ``arrays`` (minus ``reference``) that also refuses NaN/Inf in ``arrays``.

    One pass over the values does both (:func:`parse_update` uses it instead of a separate
    finiteness pass): the norm is bit for bit the one :func:`l2_norm` gives.

    Raises
    ------
    NonFiniteValues
        reason ``non_finite``, naming the first tensor (in ``arrays`` order) holding NaN or Inf, as
        :func:`~qflare.fl.spec.check_finite` does.
    """
    return _l2_norm(arrays, reference, reject_non_finite=True)


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
    return _bound(l2_norm(update, reference), max_norm)


def _bound(norm: float, max_norm: float | None) -> float:
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


def parse_dp_epsilon(meta: Mapping[str, str]) -> float | None:
    """``dp_epsilon`` (optional, finite, >= 0): the local-DP epsilon the device reports it has spent
    (``qflare.fl.local_dp``; signed with the upload). The server records it; it cannot verify it."""
    if "dp_epsilon" not in meta:
        return None
    try:
        epsilon = float(meta["dp_epsilon"])
    except ValueError:
        raise MalformedPayload("dp_epsilon is not a number", reason="bad_dp_epsilon") from None
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise UpdateRejected("dp_epsilon must be finite and >= 0", reason="bad_dp_epsilon")
    return epsilon


@dataclass(frozen=True)
class ParsedUpdate:
    """A validated update's tensors and metadata; ``norm`` is its step's L2 norm from the base model."""

    arrays: NDArrays
    num_examples: int
    train_loss: float | None
    norm: float | None = None
    dp_epsilon: float | None = None  # the local-DP epsilon the device reports (``parse_dp_epsilon``)


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
    # Read-only views into payload (no copy); NaN/Inf are refused below, in the norm's pass over the values.
    arrays, meta = load_arrays(payload, spec, copy=False, check_finite_values=False)
    norm = None
    if reference is not None or max_norm is not None:
        # Bound the change the update makes to the global model (with a reference), not the size of the weights.
        norm = step_norm_checked(arrays, reference)
    else:
        check_finite(arrays)
    num, loss = parse_update_metadata(meta)
    if norm is not None:
        _bound(norm, max_norm)
    return ParsedUpdate(arrays=arrays, num_examples=num, train_loss=loss, norm=norm, dp_epsilon=parse_dp_epsilon(meta))
