"""Byzantine-robust aggregation rules as pure functions over :data:`~qflare.types.NDArrays`.

Every rule has the shape of :func:`qflare.fl.aggregate.fedavg`::

    rule(results: Sequence[tuple[NDArrays, int]], *, <keyword params>) -> NDArrays

and a ``*_with_outcome`` twin returning a :class:`RuleOutcome` (the arrays plus which updates were
selected, clipped or flagged) so the server can log each update's verdict and feed a reputation or
quarantine policy. ``ROBUST_RULES`` / ``ROBUST_RULES_WITH_OUTCOME`` map config names to them, and
:func:`check_rule_params` validates a rule's parameters at config load and again at round close.

Full weights or deltas
----------------------
The rules are agnostic: ``results`` may hold full model weights or deltas (``local - global``).
Selection and coordinate-wise rules (median, trimmed mean, Krum, Multi-Krum, Bulyan) give the same
answer either way, since they commute with a common translation. Rules that reason about the *size*
of a step (centered clipping, norm-bound, FLTrust) take ``reference``: when given, ``results`` are
full weights and the step of update ``i`` is ``arrays_i - reference``; the output is then full
weights too (``reference + aggregated step``). When ``reference`` is ``None`` the results are taken
to be deltas already and a delta is returned.

Weights
-------
Following the papers, the robust rules ignore ``num_examples`` (a claimed sample count is exactly
what a compromised device would inflate), except :func:`norm_bound`, which is FedAvg over clipped
deltas (Sun et al. 2019) and weights by ``num_examples``; cap the claims first with
:func:`qflare.fl.influence.cap_num_examples`.

Implementation
--------------
Updates are flattened into one ``n x d`` matrix (float32 unless some tensor needs float64), filled
tensor by tensor without an intermediate concatenation; coordinate-wise rules then work on column
chunks of a few MB, so no whole-matrix float64 copy is ever made. Krum's pairwise distances come
from the ``n x n`` Gram matrix, accumulated in float64 over column chunks after centring each chunk
(centring avoids the cancellation of ``|a|^2 + |b|^2 - 2ab`` for nearby, large vectors). Results are
cast back to each tensor's dtype (integer tensors are rounded). Inputs are assumed validated
(matching specs, finite values), as :class:`~qflare.fl.aggregate.Accumulator` guarantees.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qflare.errors import AggregationError, ConfigError, UpdateRejected
from qflare.fl.influence import DEFAULT_NORM_MULTIPLE, norm_bound_from_median
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = [
    "CONFIG_PREFIX",
    "ROBUST_RULES",
    "ROBUST_RULES_WITH_OUTCOME",
    "OPPOSED_COSINE",
    "class_agreement",
    "opposed_steps",
    "median_step",
    "output_layer",
    "RULE_PARAMS",
    "RuleOutcome",
    "Verdict",
    "bulyan",
    "bulyan_with_outcome",
    "centered_clipping",
    "centered_clipping_with_outcome",
    "check_rule_params",
    "fltrust",
    "fltrust_with_outcome",
    "krum",
    "krum_with_outcome",
    "median",
    "median_with_outcome",
    "min_updates",
    "multi_krum",
    "multi_krum_with_outcome",
    "norm_bound",
    "norm_bound_with_outcome",
    "trimmed_mean",
    "trimmed_mean_with_outcome",
]

Results = Sequence[tuple[NDArrays, int]]
Verdict = Literal["accepted", "clipped", "excluded"]

CONFIG_PREFIX = "aggregation"
"""Config section that holds a rule's parameters; error messages name ``aggregation.<key>``."""

_CHUNK_ELEMENTS = 1 << 22  # ~16 MB of float32 per column chunk, whatever n is
_EPS = 1e-12


# -- outcome ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleOutcome:
    """The aggregate and the rule's verdict on each update (indices refer to ``results``).

    Parameters
    ----------
    arrays:
        The aggregate, in the first result's tensor order and dtypes.
    selected:
        Updates that contributed to ``arrays`` (sorted). Krum family: the chosen ones; Bulyan: its
        Krum-selected set; FLTrust: those with a positive trust score; others: every update.
    weights:
        One entry per update: its coefficient in the output. For averaging rules, the weight of
        the (possibly clipped or rescaled) update in the average (they sum to 1; centered clipping
        reports its last iteration's ``clip / n``). For coordinate-wise rules (median, trimmed mean,
        Bulyan's second step), the coefficient averaged over coordinates: ties make it approximate.
    flagged:
        Updates the rule found suspicious, for reputation or quarantine: excluded by a selection
        rule, given zero trust (FLTrust), clipped (norm-bound, centered clipping), or, for
        coordinate-wise rules, kept on fewer than half as many coordinates as a typical update.
        On models with few coordinates the coordinate-wise flags are noisy.
    clipped:
        Updates that were scaled down before averaging (norm-bound, centered clipping, FLTrust).
    scores:
        One per update, the rule's own statistic: Krum score (sum of squared distances to the
        ``n - f - 2`` nearest), FLTrust trust score, the step norm for clipping rules, the fraction of
        coordinates kept for coordinate-wise rules.
    """

    arrays: NDArrays
    selected: tuple[int, ...]
    weights: tuple[float, ...]
    flagged: tuple[int, ...]
    clipped: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()

    def verdict(self, index: int) -> Verdict:
        """``"excluded"`` (did not contribute), ``"clipped"`` (scaled down) or ``"accepted"``."""
        if index not in self.selected:
            return "excluded"
        if index in self.clipped:
            return "clipped"
        return "accepted"

    def verdicts(self) -> tuple[Verdict, ...]:
        """:meth:`verdict` for every update, in ``results`` order."""
        return tuple(self.verdict(i) for i in range(len(self.weights)))


# -- parameter validation -----------------------------------------------------------------------

RULE_PARAMS: dict[str, frozenset[str]] = {
    "median": frozenset(),
    "trimmed-mean": frozenset({"beta"}),
    "krum": frozenset({"f"}),
    "multi-krum": frozenset({"f", "m"}),
    "bulyan": frozenset({"f"}),
    "centered-clipping": frozenset({"tau", "iterations"}),
    "norm-bound": frozenset({"bound", "median_multiple"}),
    "fltrust": frozenset(),
}
"""Config keys each rule accepts (runtime inputs such as ``reference`` and ``root`` are not config)."""

_DISPLAY = {
    "median": "coordinate-wise median",
    "trimmed-mean": "trimmed mean",
    "krum": "Krum",
    "multi-krum": "Multi-Krum",
    "bulyan": "Bulyan",
    "centered-clipping": "centered clipping",
    "norm-bound": "norm-bound",
    "fltrust": "FLTrust",
}


def _bad(key: str, message: str) -> ConfigError:
    return ConfigError(f"{CONFIG_PREFIX}.{key}: {message}", reason="invalid_aggregation_params")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]


def _get_int(params: Mapping[str, object], key: str, default: int | None, *, minimum: int) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if not _is_int(value) or int(value) < minimum:  # type: ignore[call-overload]
        raise _bad(key, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _get_positive(params: Mapping[str, object], key: str, default: float | None) -> float | None:
    value = params.get(key, default)
    if value is None:
        return None
    if not _is_real(value) or not float(value) > 0:  # type: ignore[arg-type]
        raise _bad(key, f"must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _get_beta(params: Mapping[str, object]) -> float:
    value = params.get("beta", _DEFAULT_BETA)
    if not _is_real(value) or not 0 <= float(value) < 0.5:  # type: ignore[arg-type]
        raise _bad("beta", f"trimmed mean needs a trim fraction in [0, 0.5), got {value!r}")
    return float(value)  # type: ignore[arg-type]


_DEFAULT_BETA = 0.1
_DEFAULT_F = 1
_DEFAULT_ITERATIONS = 3
_DEFAULT_NORM_MULTIPLE = DEFAULT_NORM_MULTIPLE


def check_rule_params(rule: str, n: int | None, params: Mapping[str, object]) -> None:
    """Validate a robust rule's config parameters, and the number of updates when known.

    Parameters
    ----------
    rule:
        A key of :data:`ROBUST_RULES` (``aggregation.rule``).
    n:
        The number of updates the rule will see (e.g. the round's expected quorum), or ``None`` at
        config load, when only the parameters themselves are checked: ``beta`` in [0, 0.5),
        ``f >= 0``, ``m >= 1``, ``tau > 0``, ``iterations >= 1``, ``bound > 0``, ``median_multiple > 0``.
    params:
        The rule's keys from the ``aggregation`` config section (see :data:`RULE_PARAMS`); missing
        keys take the rule's defaults.

    Raises
    ------
    ConfigError
        reason ``invalid_aggregation_params``; the message starts with the offending config key,
        e.g. ``"aggregation.f: Krum needs n >= 2f + 3 (n=5, f=2)"``.
    """
    if rule not in RULE_PARAMS:
        raise _bad("rule", f"unknown robust rule {rule!r} (known: {', '.join(sorted(RULE_PARAMS))})")
    allowed = RULE_PARAMS[rule]
    for key in params:
        if key not in allowed:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise _bad(key, f"not a parameter of {_DISPLAY[rule]} (accepted: {accepted})")
    if n is not None and (not _is_int(n) or n < 0):
        raise _bad("rule", f"number of updates must be a non-negative integer, got {n!r}")
    name = _DISPLAY[rule]
    if rule == "trimmed-mean":
        beta = _get_beta(params)
        if n is not None and n - 2 * math.floor(beta * n) < 1:
            raise _bad("beta", f"{name} needs at least one value left after trimming (n={n}, beta={beta})")
    elif rule in ("krum", "multi-krum", "bulyan"):
        f = _get_int(params, "f", _DEFAULT_F, minimum=0)
        assert f is not None
        m = _get_int(params, "m", None, minimum=1) if rule == "multi-krum" else None
        need, formula = (4 * f + 3, "4f + 3") if rule == "bulyan" else (2 * f + 3, "2f + 3")
        if n is not None and n < need:
            raise _bad("f", f"{name} needs n >= {formula} (n={n}, f={f})")
        if n is not None and m is not None and m > n - f:
            raise _bad("m", f"{name} needs 1 <= m <= n - f (n={n}, f={f}, m={m})")
    elif rule == "centered-clipping":
        _get_positive(params, "tau", None)
        _get_int(params, "iterations", _DEFAULT_ITERATIONS, minimum=1)
    elif rule == "norm-bound":
        _get_positive(params, "bound", None)
        _get_positive(params, "median_multiple", _DEFAULT_NORM_MULTIPLE)


def min_updates(rule: str, params: Mapping[str, object]) -> int:
    """The fewest updates ``rule`` can aggregate with ``params`` (after :func:`check_rule_params`).

    Krum and Multi-Krum need ``2f + 3``, Bulyan ``4f + 3``, every other rule 1.
    """
    check_rule_params(rule, None, params)
    if rule in ("krum", "multi-krum", "bulyan"):
        f = _get_int(params, "f", _DEFAULT_F, minimum=0)
        assert f is not None
        return 4 * f + 3 if rule == "bulyan" else 2 * f + 3
    return 1


def _require(rule: str, n: int, params: Mapping[str, object]) -> None:
    """Config errors first (ConfigError), then too few updates (AggregationError)."""
    check_rule_params(rule, None, params)
    need = min_updates(rule, params)
    if n < need:
        detail = ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
        requirement = {"krum": "2f + 3", "multi-krum": "2f + 3", "bulyan": "4f + 3"}.get(rule, "1")
        raise AggregationError(
            f"{_DISPLAY[rule]} needs at least {requirement} = {need} updates, got {n}"
            + (f" ({detail})" if detail else ""),
            reason="too_few_updates",
        )
    try:
        check_rule_params(rule, n, params)
    except ConfigError as exc:  # e.g. Multi-Krum's m > n - f with the updates that did arrive
        raise AggregationError(exc.message, reason="too_few_updates") from exc


# -- flattening ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    spec: ModelSpec
    offsets: tuple[tuple[str, int, int], ...]
    dtype: np.dtype[Any]

    @property
    def size(self) -> int:
        return self.offsets[-1][2] if self.offsets else 0


def _working_dtype(spec: ModelSpec) -> np.dtype[Any]:
    for t in spec.values():
        dt = np.dtype(t.dtype)
        if dt.itemsize > 4 or (dt.kind in "iu" and dt.itemsize >= 4):
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def _layout(results: Results) -> _Layout:
    if not results:
        raise AggregationError("no updates to aggregate", reason="no_updates")
    spec = ModelSpec.from_arrays(results[0][0])
    for arrays, num_examples in results:
        if not _is_int(num_examples) or int(num_examples) < 0:
            raise UpdateRejected(
                f"num_examples must be a non-negative integer, got {num_examples!r}", reason="invalid_num_examples"
            )
        _check_matches(spec, arrays, "results disagree on tensors")
    offsets, pos = [], 0
    for name, t in spec.items():
        offsets.append((name, pos, pos + t.size))
        pos += t.size
    return _Layout(spec, tuple(offsets), _working_dtype(spec))


def _check_matches(spec: ModelSpec, arrays: Mapping[str, np.ndarray], what: str) -> None:
    got = ModelSpec.from_arrays(arrays)
    if dict(got) != dict(spec):
        raise AggregationError(
            f"{what}: {spec.fingerprint()[:12]} vs {got.fingerprint()[:12]}", reason="inconsistent_results"
        )


def _flatten_into(layout: _Layout, arrays: Mapping[str, np.ndarray], row: np.ndarray) -> None:
    for name, lo, hi in layout.offsets:
        row[lo:hi] = np.asarray(arrays[name]).reshape(-1)


def _matrix(layout: _Layout, results: Results) -> np.ndarray:
    # One n x d matrix in the working dtype, filled tensor by tensor: no concatenated temporaries.
    matrix = np.empty((len(results), layout.size), dtype=layout.dtype)
    for i, (arrays, _) in enumerate(results):
        _flatten_into(layout, arrays, matrix[i])
    return matrix


def _vector(layout: _Layout, arrays: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    _check_matches(layout.spec, arrays, what)
    vec = np.empty(layout.size, dtype=np.float64)
    _flatten_into(layout, arrays, vec)
    return vec


def _unflatten(layout: _Layout, flat: np.ndarray) -> NDArrays:
    out: NDArrays = {}
    for name, lo, hi in layout.offsets:
        t = layout.spec[name]
        dtype = np.dtype(t.dtype)
        values = flat[lo:hi]
        if dtype.kind in "iub":
            info = np.iinfo(dtype) if dtype.kind != "b" else None
            values = np.rint(values)
            if info is not None:
                values = np.clip(values, info.min, info.max)
        out[name] = values.astype(dtype).reshape(t.shape)
    return out


def _chunk_width(n: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n, 1))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``a . b`` in the rows' dtype, again in float64 when that overflows.

    Finite float32 values above ~1.8e19 have squares beyond float32's range: an attacker's finite
    update would get an infinite norm, and the median-norm bound would refuse the whole round.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.dot(a, b))
    if math.isfinite(value) or a.dtype == np.float64:
        return value
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def _row_sqnorms(matrix: np.ndarray) -> np.ndarray:
    return np.array([_dot(row, row) for row in matrix], dtype=np.float64)


def _sorted(indices: Any) -> tuple[int, ...]:
    return tuple(sorted(int(i) for i in indices))


# -- coordinate-wise rules ----------------------------------------------------------------------


def _trimmed_core(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate, the mean of the values ranked ``k .. n-k-1``; and per row, coordinates kept."""
    n, d = matrix.shape
    out = np.empty(d, dtype=np.float64)
    kept = np.zeros(n, dtype=np.int64)
    kth = sorted({k, n - k - 1})
    width = _chunk_width(n)
    for lo in range(0, d, width):
        chunk = matrix[:, lo : lo + width]
        part = np.partition(chunk, kth, axis=0)
        out[lo : lo + width] = part[k : n - k].sum(axis=0, dtype=np.float64) / (n - 2 * k)
        low, high = part[k], part[n - k - 1]
        kept += np.count_nonzero((chunk >= low) & (chunk <= high), axis=1)
    return out, kept


def _coordinate_outcome(
    layout: _Layout, flat: np.ndarray, kept: np.ndarray, per_coordinate: int, members: Sequence[int], n: int
) -> RuleOutcome:
    d = max(layout.size, 1)
    fractions = kept / d
    weights = np.zeros(n, dtype=np.float64)
    weights[list(members)] = kept / (d * per_coordinate)
    expected = per_coordinate / len(members)
    flagged = [members[j] for j, frac in enumerate(fractions) if frac < 0.5 * expected]
    scores = np.zeros(n, dtype=np.float64)
    scores[list(members)] = fractions
    return RuleOutcome(
        arrays=_unflatten(layout, flat),
        selected=_sorted(members),
        weights=tuple(float(w) for w in weights),
        flagged=_sorted(flagged),
        scores=tuple(float(s) for s in scores),
    )


def median_with_outcome(results: Results) -> RuleOutcome:
    """Coordinate-wise median (Yin, Chen, Ramchandran & Bartlett, ICML 2018).

    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates." For an even number
    of updates, the mean of the two middle values. ``num_examples`` is ignored. Each coordinate of
    the output lies within the range of the honest values as long as fewer than half the updates
    are Byzantine.

    Raises
    ------
    AggregationError
        No updates (``no_updates``) or updates whose tensors differ (``inconsistent_results``).
    """
    layout = _layout(results)
    _require("median", len(results), {})
    n = len(results)
    k = (n - 1) // 2
    flat, kept = _trimmed_core(_matrix(layout, results), k)
    return _coordinate_outcome(layout, flat, kept, n - 2 * k, range(n), n)


def trimmed_mean_with_outcome(results: Results, *, beta: float = _DEFAULT_BETA) -> RuleOutcome:
    """Coordinate-wise trimmed mean (Yin, Chen, Ramchandran & Bartlett, ICML 2018).

    Per coordinate, drops the ``floor(beta * n)`` largest and smallest values and averages the rest.
    ``num_examples`` is ignored. With at most ``floor(beta * n)`` Byzantine updates, every output
    coordinate lies within the honest values' range.

    Parameters
    ----------
    beta:
        Trim fraction per side, in ``[0, 0.5)`` (default 0.1); ``0`` is the plain mean.

    Raises
    ------
    ConfigError
        ``beta`` outside ``[0, 0.5)`` (``invalid_aggregation_params``, names ``aggregation.beta``).
    AggregationError
        No updates, or inconsistent tensors.
    """
    layout = _layout(results)
    _require("trimmed-mean", len(results), {"beta": beta})
    n = len(results)
    k = math.floor(beta * n)
    flat, kept = _trimmed_core(_matrix(layout, results), k)
    return _coordinate_outcome(layout, flat, kept, n - 2 * k, range(n), n)


# -- Krum family --------------------------------------------------------------------------------


def _pairwise_sqdist(matrix: np.ndarray) -> np.ndarray:
    """``n x n`` squared Euclidean distances via a float64 Gram matrix over centred column chunks."""
    n, d = matrix.shape
    gram = np.zeros((n, n), dtype=np.float64)
    width = _chunk_width(n)
    for lo in range(0, d, width):
        chunk = matrix[:, lo : lo + width].astype(np.float64)
        chunk -= chunk.mean(axis=0)
        gram += chunk @ chunk.T
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def _krum_scores(dist: np.ndarray, members: Sequence[int], f: int) -> np.ndarray:
    """Krum score of each member: sum of squared distances to its ``r - f - 2`` nearest other members."""
    r = len(members)
    if r == 1:
        return np.zeros(1)
    neighbours = min(max(r - f - 2, 1), r - 1)
    sub = dist[np.ix_(members, members)]
    others = np.sort(sub, axis=1)[:, 1 : neighbours + 1]  # column 0 is the distance to itself
    return others.sum(axis=1)


def _select_order(scores: np.ndarray, count: int, dist: np.ndarray, members: Sequence[int]) -> list[int]:
    """Positions (into ``members``) of the ``count`` lowest scores, ties broken without using order.

    Scores within a relative 1e-9 of each other are ties (e.g. two mutual nearest neighbours when
    Krum looks at one neighbour, as in Bulyan's last picks); a tie goes to the member with the
    smaller sum of squared distances to all members, and only then to the lower index, so the choice
    does not depend on the order the updates arrived in.
    """
    total = dist[np.ix_(members, members)].sum(axis=1)
    left = list(range(len(members)))
    chosen: list[int] = []
    for _ in range(count):
        best = min(scores[j] for j in left)
        tol = 1e-9 * max(abs(best), 1e-300)
        tied = [j for j in left if scores[j] <= best + tol]
        pick = min(tied, key=lambda j: (total[j], j))
        chosen.append(pick)
        left.remove(pick)
    return chosen


def _krum_family(rule: str, results: Results, f: int, m: int | None) -> RuleOutcome:
    layout = _layout(results)
    n = len(results)
    _require(rule, n, {"f": f} if rule == "krum" else {"f": f, "m": m})
    keep = 1 if rule == "krum" else (n - f if m is None else m)
    matrix = _matrix(layout, results)
    dist = _pairwise_sqdist(matrix)
    scores = _krum_scores(dist, list(range(n)), f)
    chosen = sorted(_select_order(scores, keep, dist, list(range(n))))
    if keep == 1:
        flat = matrix[chosen[0]]
    else:  # row by row: matrix[chosen] would copy m rows
        flat = np.zeros(layout.size, dtype=np.float64)
        for i in chosen:
            flat += matrix[i]
        flat /= keep
    return RuleOutcome(
        arrays=_unflatten(layout, flat),
        selected=tuple(chosen),
        weights=tuple(1.0 / keep if i in chosen else 0.0 for i in range(n)),
        flagged=tuple(i for i in range(n) if i not in chosen),
        scores=tuple(float(s) for s in scores),
    )


def multi_krum_with_outcome(results: Results, *, f: int = _DEFAULT_F, m: int | None = None) -> RuleOutcome:
    """Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017).

    "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent." Each update's score is
    the sum of squared distances to its ``n - f - 2`` nearest neighbours; the ``m`` updates with the
    lowest scores are averaged (unweighted, as in the paper). ``m = 1`` is Krum. Ties in score go to
    the lower index.

    Parameters
    ----------
    f:
        Number of Byzantine updates tolerated (default 1); needs ``n >= 2f + 3``.
    m:
        Number of updates averaged, ``1 <= m <= n - f``; ``None`` (default) means ``n - f``.

    Raises
    ------
    ConfigError
        Invalid ``f`` or ``m`` (``invalid_aggregation_params``).
    AggregationError
        ``too_few_updates`` when ``n < 2f + 3`` or ``m > n - f``; ``no_updates``; ``inconsistent_results``.
    """
    return _krum_family("multi-krum", results, f, m)


def krum_with_outcome(results: Results, *, f: int = _DEFAULT_F) -> RuleOutcome:
    """Krum (Blanchard et al., NeurIPS 2017): the one update with the lowest Krum score.

    The output is that update exactly. See :func:`multi_krum_with_outcome` for the score; needs
    ``n >= 2f + 3`` (default ``f = 1``).

    Raises
    ------
    ConfigError
        Invalid ``f``.
    AggregationError
        ``too_few_updates`` when ``n < 2f + 3``.
    """
    return _krum_family("krum", results, f, None)


def bulyan_with_outcome(results: Results, *, f: int = _DEFAULT_F) -> RuleOutcome:
    """Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018) over Krum.

    "The Hidden Vulnerability of Distributed Learning in Byzantium." Selects ``theta = n - 2f``
    updates by applying Krum repeatedly (each pick leaves the candidate set), then, per coordinate,
    averages the ``beta = theta - 2f`` selected values closest to their median. In the last picks
    the candidate set has fewer than ``2f + 3`` members; Krum then scores with
    ``max(r - f - 2, 1)`` neighbours. ``num_examples`` is ignored.

    Parameters
    ----------
    f:
        Number of Byzantine updates tolerated (default 1); needs ``n >= 4f + 3``.

    Raises
    ------
    ConfigError
        Invalid ``f``.
    AggregationError
        ``too_few_updates`` when ``n < 4f + 3``.
    """
    layout = _layout(results)
    n = len(results)
    _require("bulyan", n, {"f": f})
    theta, beta = n - 2 * f, n - 4 * f
    matrix = _matrix(layout, results)
    dist = _pairwise_sqdist(matrix)
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        scores = _krum_scores(dist, remaining, f)
        pick = remaining[_select_order(scores, 1, dist, remaining)[0]]
        chosen.append(pick)
        remaining.remove(pick)
    chosen.sort()
    first_scores = _krum_scores(dist, list(range(n)), f)

    d = layout.size
    flat = np.empty(d, dtype=np.float64)
    kept = np.zeros(theta, dtype=np.int64)
    width = _chunk_width(theta)
    for lo in range(0, d, width):
        chunk = matrix[chosen, lo : lo + width]  # fancy row index: copies this chunk only
        med = np.median(chunk, axis=0)
        closest = np.argpartition(np.abs(chunk - med), beta - 1, axis=0)[:beta]
        flat[lo : lo + width] = np.take_along_axis(chunk, closest, axis=0).sum(axis=0, dtype=np.float64) / beta
        kept += np.bincount(closest.ravel(), minlength=theta)
    outcome = _coordinate_outcome(layout, flat, kept, beta, chosen, n)
    excluded = [i for i in range(n) if i not in chosen]
    return RuleOutcome(
        arrays=outcome.arrays,
        selected=tuple(chosen),
        weights=outcome.weights,
        flagged=_sorted(set(excluded) | set(outcome.flagged)),
        scores=tuple(float(s) for s in first_scores),
    )


# -- clipping rules -----------------------------------------------------------------------------


def _steps(layout: _Layout, results: Results, reference: NDArrays | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``n x d`` matrix of steps (``arrays - reference`` in place), and the flat reference."""
    matrix = _matrix(layout, results)
    if reference is None:
        return matrix, None
    ref = _vector(layout, reference, "reference and results disagree on tensors")
    ref_cast = ref.astype(matrix.dtype)
    for row in matrix:
        row -= ref_cast
    return matrix, ref


def _finish(layout: _Layout, step: np.ndarray, ref: np.ndarray | None) -> NDArrays:
    return _unflatten(layout, step if ref is None else ref + step)


def centered_clipping_with_outcome(
    results: Results,
    *,
    reference: NDArrays | None = None,
    tau: float | None = None,
    iterations: int = _DEFAULT_ITERATIONS,
) -> RuleOutcome:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021).

    "Learning from History for Byzantine Robust Optimization." Starting from a centre ``v``, repeat
    ``iterations`` times: ``v <- v + (1/n) sum_i clip_tau(x_i - v)`` where ``clip_tau`` scales a
    vector down to L2 norm ``tau``. Unweighted, as in the paper.

    Parameters
    ----------
    reference:
        The starting centre (the paper uses the previous aggregate / server momentum; with full
        weights, the current global model). ``None`` (default) starts from the coordinate-wise
        median of the updates, which is robust whatever the updates represent. Unlike the other
        rules here, the output is in the same space as ``results`` either way.
    tau:
        Clipping radius (> 0). ``None`` (default; a QFLARE choice, the paper tunes it) uses the
        median distance of the updates to the starting centre.
    iterations:
        Number of clipping iterations ``L`` (default 3; the paper finds 1 enough with momentum).

    Raises
    ------
    ConfigError
        ``tau <= 0`` or ``iterations < 1``.
    AggregationError
        No updates, inconsistent tensors or reference.
    """
    layout = _layout(results)
    n = len(results)
    _require("centered-clipping", n, {"tau": tau, "iterations": iterations})
    matrix = _matrix(layout, results)
    if reference is None:
        center, _ = _trimmed_core(matrix, (n - 1) // 2)
    else:
        center = _vector(layout, reference, "reference and results disagree on tensors")
    radius = tau
    factors = np.ones(n)
    norms = np.zeros(n)
    diff = np.empty(layout.size, dtype=matrix.dtype)
    for _ in range(iterations):
        # Differences in the working dtype, one row at a time: mixed float32/float64 arithmetic over
        # the whole model is several times slower, and an n x d difference matrix would double memory.
        center_w = center.astype(matrix.dtype)
        sq = []
        for row in matrix:
            np.subtract(row, center_w, out=diff)
            sq.append(_dot(diff, diff))
        norms = np.sqrt(np.array(sq))
        if radius is None:
            radius = float(np.median(norms))
        factors = np.minimum(1.0, radius / np.maximum(norms, _EPS))
        step = np.zeros(layout.size, dtype=matrix.dtype)
        for row, factor in zip(matrix, factors, strict=True):
            np.subtract(row, center_w, out=diff)
            diff *= diff.dtype.type(factor / n)
            step += diff
        center = center + step
    clipped = [i for i in range(n) if factors[i] < 1.0]
    return RuleOutcome(
        arrays=_unflatten(layout, center),
        selected=tuple(range(n)),
        weights=tuple(float(w) / n for w in factors),
        flagged=tuple(clipped),
        clipped=tuple(clipped),
        scores=tuple(float(s) for s in norms),
    )


def norm_bound_with_outcome(
    results: Results,
    *,
    reference: NDArrays | None = None,
    bound: float | None = None,
    median_multiple: float = _DEFAULT_NORM_MULTIPLE,
    weights: Sequence[float] | None = None,
    flag_beyond: float = 1.0,
    flag_opposed: bool = False,
) -> RuleOutcome:
    """Norm-bounding defence (Sun, Kairouz, Suresh & McMahan 2019, "Can You Really Backdoor FL?").

    Each step ``x_i - reference`` is scaled down to L2 norm at most ``bound``, then the clipped
    steps are averaged weighted by ``num_examples`` (FedAvg over clipped updates). The output step's
    norm is at most ``bound`` (a convex combination of vectors inside the ball).

    Parameters
    ----------
    reference:
        The global model the updates started from (then ``results`` are full weights and full
        weights are returned); ``None`` (default) when ``results`` are already deltas.
    bound:
        The norm bound (> 0). ``None`` (default) uses ``median_multiple`` times the median step norm
        of this round (:func:`qflare.fl.influence.norm_bound_from_median`).
    median_multiple:
        Multiple of the median norm used when ``bound`` is ``None`` (default 2.0).
    weights:
        Each update's (non-negative) weight instead of its ``num_examples``, e.g. capped claims
        (:func:`qflare.fl.influence.cap_weight_shares`); not a config key.
    flag_beyond, flag_opposed:
        Verdicts for reputation only (the output does not change; not config keys, bounded FedAvg sets
        them): flag a clipped step only when its norm exceeds ``flag_beyond`` times the bound (default
        1: every clipped step), and also flag each step that points away from the round's coordinate-wise
        median step (cosine below :data:`OPPOSED_COSINE`, :func:`median_step`, :func:`opposed_steps`).

    Raises
    ------
    ConfigError
        ``bound`` or ``median_multiple`` not > 0.
    AggregationError
        No updates, inconsistent tensors, ``weights`` of the wrong length or with a negative or
        non-finite entry (``invalid_weights``), or a total weight of zero (``zero_weight``).
    """
    layout = _layout(results)
    n = len(results)
    _require("norm-bound", n, {"bound": bound, "median_multiple": median_multiple})
    if weights is None:
        raw = np.array([float(int(w)) for _, w in results], dtype=np.float64)
    else:
        raw = np.asarray(weights, dtype=np.float64)
        if raw.shape != (n,) or not (np.isfinite(raw).all() and (raw >= 0).all()):
            raise AggregationError(f"need {n} finite non-negative weights, got {list(weights)!r}",
                                   reason="invalid_weights")
    total = float(raw.sum())
    if total == 0:
        raise AggregationError("total number of examples is zero", reason="zero_weight")
    steps, ref = _steps(layout, results, reference)
    norms = np.sqrt(_row_sqnorms(steps))
    limit = bound if bound is not None else norm_bound_from_median(norms.tolist(), multiple=median_multiple)
    factors = np.minimum(1.0, limit / np.maximum(norms, _EPS))
    shares = raw / total
    out = np.zeros(layout.size, dtype=np.float64)
    for row, factor, weight in zip(steps, factors, shares, strict=True):
        out += row * (factor * weight)
    clipped = tuple(i for i in range(n) if norms[i] > limit)
    flagged = {i for i in clipped if norms[i] > flag_beyond * limit}
    if flag_opposed:
        flagged |= set(opposed_steps(steps, median_step(steps), norms=norms))
    return RuleOutcome(
        arrays=_finish(layout, out, ref),
        selected=tuple(i for i in range(n) if shares[i] > 0),
        weights=tuple(float(w) for w in shares),
        flagged=tuple(sorted(flagged)),
        clipped=clipped,
        scores=tuple(float(s) for s in norms),
    )


def median_step(steps: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of the rows of ``steps`` (float64; the mean of the middle two for an even
    count; zeros for no coordinates), in column chunks (no second ``n x d`` copy).

    The direction bounded FedAvg judges opposition against (:func:`norm_bound_with_outcome` with
    ``flag_opposed``). The median (Yin et al., ICML 2018, :func:`median`) is a robust estimate of the honest
    direction with fewer than half the rows hostile: one row moves each coordinate by at most one rank,
    whatever its norm. The round's aggregate is not: a step is part of the aggregate it is judged against.
    On the traffic task (8 devices left after quarantine), a sign flipper whose flipped step was about 2 x
    the round's median norm (clipped there) pulled the aggregate to itself: its cosine to the aggregate
    stayed at +0.03..+0.16 in rounds 4-10 while its cosine to the median step was -0.11..-0.30 in rounds
    5-10, so it was flagged once and kept flipping for 9 rounds.

    Its weakness: many colluders sending the *same* step hold the same rank in every coordinate and pull
    the median towards it. Under IPM (6 identical small steps of 20) on digits, once the honest steps
    had spread (round 11 on), the colluders were no longer opposed and honest devices were; quarantine
    (3 flagged rounds of 5) had removed them by then in the default configuration, not for the rule alone.
    """
    n = steps.shape[0]
    if n == 0 or steps.shape[1] == 0:
        return np.zeros(steps.shape[1], dtype=np.float64)
    centre, _ = _trimmed_core(steps, (n - 1) // 2)
    return centre


OPPOSED_COSINE = -0.1
"""A step whose cosine to the round's coordinate-wise median step is below this is *opposed*
(:func:`opposed_steps`, :func:`median_step`)."""


def opposed_steps(steps: np.ndarray, direction: np.ndarray, *, below: float = OPPOSED_COSINE,
                  norms: np.ndarray | None = None) -> tuple[int, ...]:
    """Rows of ``steps`` whose cosine to ``direction`` is below ``below`` (none if ``direction`` is zero);
    ``norms``: the rows' L2 norms, if the caller has them already.

    With fewer than half the weight hostile, a bounded average keeps the honest direction, and a step
    against it is what sign flipping, IPM and a sign-flipped inflated claim send. Honest steps on non-IID
    data can point away in a single round, so the verdict feeds reputation (quarantine after strikes in
    several rounds, :mod:`qflare.server.reputation`); bounded FedAvg also leaves such a step out of that
    round's aggregate, which costs an honest device one round's say, not its place.
    The margin below zero: near convergence honest steps are small and their cosines scatter around 0;
    on 20-round Dirichlet(0.5) digits with 30 % label flippers, a threshold of 0 quarantined four honest
    devices (final accuracy 75.6 %), -0.1 two (81.7 %), with sign flippers caught either way (both
    before flagged steps were left out of the aggregate).
    """
    dd = _dot(direction, direction)
    if not dd > 0.0:
        return ()
    direction = direction.astype(steps.dtype, copy=False)
    scale = below * math.sqrt(dd)
    row_norms = norms if norms is not None else np.sqrt(_row_sqnorms(steps))
    return tuple(i for i, row in enumerate(steps) if _dot(row, direction) < scale * float(row_norms[i]))


def output_layer(spec: ModelSpec) -> tuple[str, str | None] | None:
    """The classifier's output layer in ``spec``: ``(weight, bias)`` tensor names, or ``None``.

    The weight is the *last* two-dimensional floating tensor in spec (``state_dict``) order, which is
    the last ``nn.Linear`` of a model whose output layer is registered last (both QFLARE models; any
    ``nn.Sequential``); its rows are the classes. Its bias is the tensor right after it when that is a
    floating vector of as many values. ``None`` when there is no such tensor or it has a single row
    (a regressor's one output, as the traffic forecaster's ``head.2``: label flipping does not apply).
    """
    names = list(spec)
    for at in range(len(names) - 1, -1, -1):
        t = spec[names[at]]
        if len(t.shape) == 2 and np.dtype(t.dtype).kind == "f":
            if t.shape[0] < 2:
                return None
            bias = names[at + 1] if at + 1 < len(names) else None
            if bias is not None:
                b = spec[bias]
                if not (b.shape == (t.shape[0],) and np.dtype(b.dtype).kind == "f"):
                    bias = None
            return names[at], bias
    return None


def class_agreement(results: Results, *, reference: NDArrays, layer: tuple[str, str | None]) -> np.ndarray:
    """Per update, how much its output layer's step agrees with the round's, class by class.

    For every class ``c`` (row of the output layer's weight, with its bias value appended), the cosine
    between update ``i``'s row step ``x_i[c] - reference[c]`` and the coordinate-wise median of all the
    updates' row steps; the score is the mean of those cosines over the classes (a zero row counts 0).
    A device trained on flipped labels moves row ``c`` towards the features of the images it was told
    are ``c``, which are another class's: its rows disagree with the median rows, whatever its class
    mix (Tolpegin, Truex, Gursoy & Liu, ESORICS 2020, "Data Poisoning Attacks Against Federated Learning
    Systems", separate flippers by the output layer's update, there with PCA over one class's rows).
    An honest device's rows agree at least for the classes it holds. Memory: ``n x`` the output layer.
    """
    weight, bias = layer
    base_w = np.asarray(reference[weight], dtype=np.float64)
    parts = []
    for arrays, _ in results:
        rows = np.asarray(arrays[weight], dtype=np.float64) - base_w
        if bias is not None:
            col = np.asarray(arrays[bias], dtype=np.float64) - np.asarray(reference[bias], dtype=np.float64)
            rows = np.concatenate([rows, col[:, None]], axis=1)
        parts.append(rows)
    steps = np.stack(parts)  # n x classes x (inputs + 1)
    centre = np.median(steps, axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        dots = np.einsum("ncd,cd->nc", steps, centre)
        norms = np.linalg.norm(steps, axis=2) * np.linalg.norm(centre, axis=1)[None, :]
        cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    cosines = np.nan_to_num(cosines, nan=0.0, posinf=0.0, neginf=0.0)
    return np.asarray(cosines.mean(axis=1), dtype=np.float64)


def fltrust_with_outcome(results: Results, *, root: NDArrays, reference: NDArrays | None = None) -> RuleOutcome:
    """FLTrust (Cao, Fang, Liu & Gong, NDSS 2021), "Byzantine-robust FL via Trust Bootstrapping".

    The server trains on a small clean root dataset to get a root step ``g0``. Each client step
    ``g_i`` gets trust ``TS_i = ReLU(cos(g_i, g0))`` and is rescaled to ``|g0|``; the output step is
    ``sum_i TS_i * (|g0| / |g_i|) g_i / sum_i TS_i``. ``num_examples`` is ignored. A step pointing away
    from ``g0`` gets zero weight. If every trust score is zero the output step is zero (the global
    model does not move).

    Parameters
    ----------
    root:
        The server's root update, in the same space as ``results`` (full weights when ``reference``
        is given, a delta otherwise).
    reference:
        The global model (then ``results`` and ``root`` are full weights and full weights are
        returned); ``None`` (default) when they are deltas.

    Raises
    ------
    AggregationError
        ``invalid_root_update`` when the root step is zero; no updates; inconsistent tensors.
    """
    layout = _layout(results)
    n = len(results)
    _require("fltrust", n, {})
    steps, ref = _steps(layout, results, reference)
    g0 = _vector(layout, root, "root update and results disagree on tensors")
    if ref is not None:
        g0 -= ref
    g0_norm = math.sqrt(float(np.dot(g0, g0)))
    if not g0_norm > 0:
        raise AggregationError("FLTrust needs a non-zero root update", reason="invalid_root_update")
    g0_cast = g0.astype(steps.dtype)
    norms = np.sqrt(_row_sqnorms(steps))
    trust = np.zeros(n)
    for i, row in enumerate(steps):
        if norms[i] > 0:
            trust[i] = max(0.0, _dot(row, g0_cast) / (norms[i] * g0_norm))
    total = float(trust.sum())
    out = np.zeros(layout.size, dtype=np.float64)
    weights = trust / total if total > 0 else np.zeros(n)
    for i, row in enumerate(steps):
        if weights[i] > 0:
            out += row * (weights[i] * g0_norm / norms[i])
    selected = tuple(i for i in range(n) if weights[i] > 0)
    return RuleOutcome(
        arrays=_finish(layout, out, ref),
        selected=selected,
        weights=tuple(float(w) for w in weights),
        flagged=tuple(i for i in range(n) if trust[i] <= 0),
        clipped=tuple(i for i in selected if norms[i] > g0_norm),
        scores=tuple(float(t) for t in trust),
    )


# -- arrays-only wrappers -----------------------------------------------------------------------


def median(results: Results) -> NDArrays:
    """Coordinate-wise median; see :func:`median_with_outcome`."""
    return median_with_outcome(results).arrays


def trimmed_mean(results: Results, *, beta: float = _DEFAULT_BETA) -> NDArrays:
    """Coordinate-wise trimmed mean; see :func:`trimmed_mean_with_outcome`."""
    return trimmed_mean_with_outcome(results, beta=beta).arrays


def krum(results: Results, *, f: int = _DEFAULT_F) -> NDArrays:
    """Krum; see :func:`krum_with_outcome`."""
    return krum_with_outcome(results, f=f).arrays


def multi_krum(results: Results, *, f: int = _DEFAULT_F, m: int | None = None) -> NDArrays:
    """Multi-Krum; see :func:`multi_krum_with_outcome`."""
    return multi_krum_with_outcome(results, f=f, m=m).arrays


def bulyan(results: Results, *, f: int = _DEFAULT_F) -> NDArrays:
    """Bulyan; see :func:`bulyan_with_outcome`."""
    return bulyan_with_outcome(results, f=f).arrays


def centered_clipping(
    results: Results,
    *,
    reference: NDArrays | None = None,
    tau: float | None = None,
    iterations: int = _DEFAULT_ITERATIONS,
) -> NDArrays:
    """Centered clipping; see :func:`centered_clipping_with_outcome`."""
    return centered_clipping_with_outcome(results, reference=reference, tau=tau, iterations=iterations).arrays


def norm_bound(
    results: Results,
    *,
    reference: NDArrays | None = None,
    bound: float | None = None,
    median_multiple: float = _DEFAULT_NORM_MULTIPLE,
) -> NDArrays:
    """Norm-bounded FedAvg; see :func:`norm_bound_with_outcome`."""
    return norm_bound_with_outcome(results, reference=reference, bound=bound, median_multiple=median_multiple).arrays


def fltrust(results: Results, *, root: NDArrays, reference: NDArrays | None = None) -> NDArrays:
    """FLTrust; see :func:`fltrust_with_outcome`."""
    return fltrust_with_outcome(results, root=root, reference=reference).arrays


ROBUST_RULES: dict[str, Callable[..., NDArrays]] = {
    "median": median,
    "trimmed-mean": trimmed_mean,
    "krum": krum,
    "multi-krum": multi_krum,
    "bulyan": bulyan,
    "centered-clipping": centered_clipping,
    "norm-bound": norm_bound,
    "fltrust": fltrust,
}
"""Config name -> rule ``(results, **params) -> NDArrays``; parameters as in :data:`RULE_PARAMS`."""

ROBUST_RULES_WITH_OUTCOME: dict[str, Callable[..., RuleOutcome]] = {
    "median": median_with_outcome,
    "trimmed-mean": trimmed_mean_with_outcome,
    "krum": krum_with_outcome,
    "multi-krum": multi_krum_with_outcome,
    "bulyan": bulyan_with_outcome,
    "centered-clipping": centered_clipping_with_outcome,
    "norm-bound": norm_bound_with_outcome,
    "fltrust": fltrust_with_outcome,
}
"""Config name -> rule ``(results, **params) -> RuleOutcome``."""
