"""Bounded influence: how much one device's update may weigh, and how far it may move the model.

Two levers a compromised but enrolled device can pull under plain FedAvg are its claimed sample
count (its weight) and the size of its step. By default both are bounded where updates are
decrypted:

- :func:`cap_num_examples` caps a claim at the device's enrolled dataset size and at a multiple of
  the round's median claim (:func:`cap_round_num_examples` does a whole round);
- :func:`cap_weight_shares` lowers the largest weights of a round so that no update holds more than
  ``max_share / n`` of the total: whatever the claims, any ``k`` of ``n`` updates then hold at most
  ``k * max_share / n`` of the weight (with ``max_share = 1``, exactly their share: equal weights);
- :func:`clip_to_norm` scales a step down to a bound, by default :func:`norm_bound_from_median`:
  a multiple of the round's median step norm.

:func:`global_norm` is the L2 norm over all tensors without a float64 copy of the model: one
``np.dot`` per tensor on a ravel view, with the per-tensor sums accumulated in float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from qflare.errors import AggregationError, ConfigError, ModelSpecMismatch
from qflare.types import NDArrays

__all__ = [
    "DEFAULT_COUNT_MULTIPLE",
    "DEFAULT_MAX_SHARE",
    "DEFAULT_NORM_MULTIPLE",
    "DEFAULT_OUTLIER_MULTIPLE",
    "cap_num_examples",
    "cap_round_num_examples",
    "cap_weight_shares",
    "clip_factor",
    "clip_to_norm",
    "global_norm",
    "norm_bound_from_median",
]

DEFAULT_COUNT_MULTIPLE = 3.0
"""Default cap on a claim, as a multiple of the round's median claim."""

DEFAULT_NORM_MULTIPLE = 2.0
"""Default norm bound, as a multiple of the round's median step norm."""

DEFAULT_MAX_SHARE = 1.0
"""Default cap on one update's share of a round's weight, as a multiple of ``1 / n`` (1: equal shares)."""

DEFAULT_OUTLIER_MULTIPLE = 2.0
"""Default verdict threshold of bounded FedAvg: a step over this multiple of its norm bound is flagged (reputation)."""


def _sq_norm(array: np.ndarray) -> float:
    flat = np.ravel(array)  # a view for contiguous arrays
    if flat.dtype.kind not in "fc":
        flat = flat.astype(np.float64)  # integer/bool tensors are small (counters)
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.dot(flat, flat))
    if not math.isfinite(value) and flat.dtype != np.float64:
        # finite float32 values above ~1.8e19 square beyond float32's range: an infinite norm would make
        # a finite update unclippable (and the round's median bound refuse the round)
        value = float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
    return value


def global_norm(arrays: Mapping[str, np.ndarray], *, reference: Mapping[str, np.ndarray] | None = None) -> float:
    """L2 norm over every tensor of ``arrays``, or of ``arrays - reference`` when given.

    Each tensor's squared norm is one ``np.dot`` in the tensor's own dtype (float32 stays float32),
    summed in float64 over tensors, so the largest temporary is one tensor's difference (only when
    ``reference`` is given) rather than a float64 copy of the model.

    Raises
    ------
    ModelSpecMismatch
        ``reference`` names different tensors (reason ``missing_tensor``).
    """
    if reference is not None and set(reference) != set(arrays):
        raise ModelSpecMismatch(
            f"update and reference differ in tensors: {sorted(set(reference) ^ set(arrays))}", reason="missing_tensor"
        )
    total = 0.0
    for name, array in arrays.items():
        if reference is None:
            total += _sq_norm(array)
        else:
            total += _sq_norm(np.subtract(array, reference[name], dtype=np.result_type(array, np.float32)))
    return math.sqrt(total)


def clip_factor(norm: float, bound: float) -> float:
    """``min(1, bound / norm)``: the factor that brings a step of norm ``norm`` inside ``bound``."""
    if not bound >= 0:
        raise ConfigError(f"norm bound must be >= 0, got {bound!r}", reason="invalid_aggregation_params")
    return 1.0 if norm <= bound else bound / norm


def clip_to_norm(delta: Mapping[str, np.ndarray], bound: float, *, norm: float | None = None) -> NDArrays:
    """``delta`` scaled down to L2 norm at most ``bound`` (unchanged if already inside).

    Parameters
    ----------
    delta:
        A step (``local - global``); clipping full weights would shrink the model itself.
    bound:
        The L2 bound (>= 0), e.g. from :func:`norm_bound_from_median`.
    norm:
        ``global_norm(delta)`` if the caller already has it (default: computed).

    Returns
    -------
    NDArrays
        A new dict in ``delta``'s order and dtypes. When no clipping is needed it holds the input
        arrays themselves (not copies); treat them as read-only.
    """
    size = global_norm(delta) if norm is None else norm
    factor = clip_factor(size, bound)
    if factor == 1.0:
        return dict(delta)
    out: NDArrays = {}
    for name, array in delta.items():
        if array.dtype.kind in "fc":
            out[name] = (array * np.asarray(factor, dtype=array.dtype)).astype(array.dtype, copy=False)
        else:
            out[name] = np.rint(array * factor).astype(array.dtype)
    return out


def norm_bound_from_median(norms: Sequence[float], *, multiple: float = DEFAULT_NORM_MULTIPLE) -> float:
    """``multiple`` times the median of this round's step norms: the default clipping bound.

    Honest steps in one round have similar norms, so a multiple of the median (robust to up to half
    the updates being boosted) clips boosted updates and leaves honest ones alone.

    Raises
    ------
    ConfigError
        ``multiple`` not > 0 (reason ``invalid_aggregation_params``).
    AggregationError
        No norms (``no_updates``) or a NaN/negative norm (``invalid_norm``).
    """
    if not (isinstance(multiple, numbers.Real) and math.isfinite(multiple) and multiple > 0):
        raise ConfigError(
            f"aggregation.median_multiple: must be a finite number > 0, got {multiple!r}",
            reason="invalid_aggregation_params",
        )
    if not norms:
        raise AggregationError("no update norms to take a median of", reason="no_updates")
    values = np.asarray(norms, dtype=np.float64)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise AggregationError("update norms must be finite and non-negative", reason="invalid_norm")
    return float(multiple) * float(np.median(values))


def cap_num_examples(
    claimed: int,
    *,
    device_cap: int | None = None,
    round_median: float | None = None,
    median_multiple: float = DEFAULT_COUNT_MULTIPLE,
) -> int:
    """The weight a device may have: ``min(claimed, device_cap, floor(median_multiple * round_median))``.

    Parameters
    ----------
    claimed:
        The ``num_examples`` the device reported (>= 0).
    device_cap:
        The dataset size declared when the device was enrolled, or ``None`` (default) for no cap.
    round_median:
        The median claim of this round, or ``None`` (default) to skip that cap. The median cap
        is at least 1, so a round of tiny claims never zeroes an honest device.
    median_multiple:
        Multiple of ``round_median`` allowed (default 3.0, > 0).

    Raises
    ------
    ConfigError
        A negative claim or cap, or ``median_multiple`` not > 0 (reason ``invalid_aggregation_params``).
    """
    for key, value in (("claimed", claimed), ("device_cap", device_cap)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
            raise ConfigError(
                f"{key} must be a non-negative integer, got {value!r}", reason="invalid_aggregation_params"
            )
    if not (isinstance(median_multiple, numbers.Real) and math.isfinite(median_multiple) and median_multiple > 0):
        raise ConfigError(
            f"median_multiple must be a finite number > 0, got {median_multiple!r}", reason="invalid_aggregation_params"
        )
    cap = int(claimed)
    if device_cap is not None:
        cap = min(cap, int(device_cap))
    if round_median is not None:
        cap = min(cap, max(1, math.floor(median_multiple * float(round_median))))
    return cap


def cap_round_num_examples(
    claims: Sequence[int],
    *,
    device_caps: Sequence[int | None] | None = None,
    median_multiple: float = DEFAULT_COUNT_MULTIPLE,
) -> list[int]:
    """:func:`cap_num_examples` for every update of a round, with the round's median claim.

    Parameters
    ----------
    claims:
        Each update's claimed ``num_examples``.
    device_caps:
        Each device's enrolled dataset size (``None`` entries for no cap), aligned with ``claims``;
        ``None`` (default) for no device caps.
    median_multiple:
        See :func:`cap_num_examples` (default 3.0).
    """
    if device_caps is not None and len(device_caps) != len(claims):
        raise AggregationError("device_caps and claims differ in length", reason="inconsistent_results")
    if not claims:
        return []
    median = float(np.median(np.asarray(claims, dtype=np.float64)))
    caps = device_caps if device_caps is not None else [None] * len(claims)
    return [
        cap_num_examples(c, device_cap=cap, round_median=median, median_multiple=median_multiple)
        for c, cap in zip(claims, caps, strict=True)
    ]


def cap_weight_shares(weights: Sequence[float], *, max_share: float = DEFAULT_MAX_SHARE) -> list[float]:
    """``min(w_i, T)`` for the largest level ``T`` at which no update holds more than ``max_share / n``.

    Water-filling from the top: the largest weights are lowered to a common level ``T`` until the
    largest share ``T / sum_j min(w_j, T)`` is at most ``max_share / n``, where ``n`` counts the
    updates with a positive weight (a zero weight takes no part and stays zero). Weights already
    within the bound are returned unchanged; ``max_share = 1`` gives every positive weight the same
    value (the smallest one).

    The bound holds whatever the weights are, so it does not rely on a median an attacker can shift:
    any ``k`` of the ``n`` updates hold at most ``min(1, k * max_share / n)`` of the total weight. With
    ``max_share = 1``, 30 % of the devices hold at most 30 % of the weight however many examples they
    claim; with ``max_share = s`` they hold less than half as long as they are fewer than ``n / (2s)``.

    Raises
    ------
    ConfigError
        ``max_share`` not a finite number >= 1 (``aggregation.max_share``; below 1 no weights fit), or
        a negative or non-finite weight (reason ``invalid_aggregation_params``).
    """
    ok = isinstance(max_share, numbers.Real) and not isinstance(max_share, bool) and math.isfinite(max_share)
    if not ok or not max_share >= 1:
        raise ConfigError(
            f"aggregation.max_share: must be a finite number >= 1 (a share of 1/n each is the least "
            f"that can be met), got {max_share!r}",
            reason="invalid_aggregation_params",
        )
    values = np.asarray(weights, dtype=np.float64)
    if values.size and not (np.isfinite(values).all() and (values >= 0).all()):
        raise ConfigError("weights must be finite and non-negative", reason="invalid_aggregation_params")
    positive = np.sort(values[values > 0])
    n = int(positive.size)
    if n == 0:
        return [float(v) for v in values]
    limit = float(max_share) / n
    if positive[-1] <= limit * float(positive.sum()):
        return [float(v) for v in values]
    # T lies between the largest weight left alone and the smallest one lowered; with m lowered,
    # T = limit * (below + m * T), so T = max_share * below / (n - max_share * m).
    prefix = np.concatenate(([0.0], np.cumsum(positive)))
    level = float(positive[0])  # all equal: always within the bound
    for m in range(1, n):
        denom = n - float(max_share) * m
        if denom <= 0:
            break
        t = float(max_share) * float(prefix[n - m]) / denom
        if positive[n - m - 1] <= t * (1 + 1e-12) and t <= positive[n - m]:  # tolerance for ties
            level = t
            break
    return [float(min(v, level)) for v in values]
