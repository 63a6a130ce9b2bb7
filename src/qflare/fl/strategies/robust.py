"""Byzantine-robust rules and bounded FedAvg as :class:`~qflare.fl.strategies.base.Strategy` objects.

Each strategy wraps a pure rule of :mod:`qflare.fl.robust` (the papers are cited there) and keeps
every update of a round (:class:`~qflare.fl.aggregate.BufferedAccumulator`: memory ``n x model``),
since these rules need all updates at once. Parameters are the rule's ``aggregation.params`` keys
(:data:`qflare.fl.robust.RULE_PARAMS`), validated at construction by
:func:`qflare.fl.robust.check_rule_params`, so a bad value is a ``ConfigError`` naming
``aggregation.<key>``. Too few updates at round close raise ``AggregationError``
(``too_few_updates``).

The accumulator receives *full client weights*. Rules that reason about step sizes
(centered clipping, norm-bound, bounded FedAvg) take the round's base model as ``reference``
(:attr:`Strategy.needs_reference`), and return full weights.

FLTrust, which needs a root update the aggregator trains on its own clean data set, is
:class:`qflare.fl.strategies.fltrust.FLTrust`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import Accumulator, BufferedAccumulator
from qflare.fl.influence import (
    DEFAULT_COUNT_MULTIPLE,
    DEFAULT_MAX_SHARE,
    DEFAULT_NORM_MULTIPLE,
    DEFAULT_OUTLIER_MULTIPLE,
    cap_round_num_examples,
    cap_weight_shares,
    norm_bound_from_median,
)
from qflare.fl.robust import (
    ROBUST_RULES,
    ROBUST_RULES_WITH_OUTCOME,
    RuleOutcome,
    check_rule_params,
    class_agreement,
    norm_bound_with_outcome,
    output_layer,
)
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies.base import Strategy
from qflare.types import NDArrays

__all__ = [
    "CLASS_OUTLIER_MADS",
    "DEFAULT_MIN_CLASS_AGREEMENT",
    "BoundedFedAvg",
    "Bulyan",
    "CenteredClipping",
    "Krum",
    "Median",
    "MultiKrum",
    "NormBound",
    "ROBUST_STRATEGIES",
    "RobustStrategy",
    "TrimmedMean",
    "bounded_fedavg",
    "bounded_fedavg_with_outcome",
]

Results = Sequence[tuple[NDArrays, int]]


class RobustStrategy(Strategy):
    """A rule of :data:`qflare.fl.robust.ROBUST_RULES` with its config parameters.

    Parameters
    ----------
    **params:
        The rule's ``aggregation.params`` (e.g. ``f=2`` for Krum); missing keys take the rule's
        defaults.

    Raises
    ------
    ConfigError
        An unknown key or a value that cannot work (reason ``invalid_aggregation_params``).
    """

    rule: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        self.check_params(params)
        self.params: dict[str, Any] = dict(params)

    @classmethod
    def check_params(cls, params: Mapping[str, object]) -> None:
        """:func:`qflare.fl.robust.check_rule_params` with the number of updates not yet known."""
        check_rule_params(cls.rule, None, params)

    def aggregate(self, results: Results) -> NDArrays:
        """The rule over all results (no reference: steps are taken relative to nothing)."""
        return ROBUST_RULES[self.rule](results, **self.params)

    def _aggregate_with(self, reference: NDArrays | None) -> Any:
        def run(results: Results) -> RuleOutcome:
            kwargs = dict(self.params)
            if self.needs_reference:
                kwargs["reference"] = reference
            return ROBUST_RULES_WITH_OUTCOME[self.rule](results, **kwargs)

        return run

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """A buffered accumulator applying the rule at :meth:`~Accumulator.result`.

        Raises
        ------
        AggregationError
            ``missing_reference``: a rule that clips steps was given no base model.
        """
        if self.needs_reference and reference is None and self._reference_required:
            raise AggregationError(
                f"{self.name} needs the round's base model to measure steps", reason="missing_reference"
            )
        return BufferedAccumulator(spec, outcome_fn=self._aggregate_with(reference))

    _reference_required: ClassVar[bool] = True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}({args})"


class Median(RobustStrategy):
    """Coordinate-wise median (Yin et al., ICML 2018); see :func:`qflare.fl.robust.median`."""

    name = rule = "median"


class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018), param ``beta``."""

    name = rule = "trimmed-mean"


class Krum(RobustStrategy):
    """Krum (Blanchard et al., NeurIPS 2017), param ``f``: needs ``n >= 2f + 3``."""

    name = rule = "krum"


class MultiKrum(RobustStrategy):
    """Multi-Krum (Blanchard et al., NeurIPS 2017), params ``f``, ``m``."""

    name = rule = "multi-krum"


class Bulyan(RobustStrategy):
    """Bulyan (El Mhamdi et al., ICML 2018), param ``f``: needs ``n >= 4f + 3``."""

    name = rule = "bulyan"


class CenteredClipping(RobustStrategy):
    """Centered clipping (Karimireddy et al., ICML 2021), params ``tau``, ``iterations``.

    Starts from the round's base model when the backend supplies it, else from the coordinate-wise
    median of the updates.
    """

    name = rule = "centered-clipping"
    needs_reference = True
    _reference_required = False


class NormBound(RobustStrategy):
    """Norm-bounded FedAvg (Sun et al. 2019), params ``bound``, ``median_multiple``."""

    name = rule = "norm-bound"
    needs_reference = True


# -- bounded FedAvg (the default) ---------------------------------------------------------------

_BOUNDED_PARAMS = frozenset({"count_multiple", "max_share", "min_class_agreement", "norm_multiple",
                             "outlier_multiple"})

DEFAULT_MIN_CLASS_AGREEMENT = 0.0
"""Bounded FedAvg's label-flipping verdict: an update whose output layer's mean per-class cosine to the
round's median rows (:func:`qflare.fl.robust.class_agreement`) is below this, and a low outlier of the round
(:data:`CLASS_OUTLIER_MADS`), is flagged; -1 turns it off."""

CLASS_OUTLIER_MADS = 2.0
"""... and below the round's median agreement by more than this many (normal-scaled) median absolute
deviations. Colluders that shift every coordinate's median (ALIE) drag honest agreements below 0 as a
group; without this condition they got 9 honest devices quarantined in the 20-round digits run."""


def _positive(params: Mapping[str, object], key: str, default: float) -> float:
    value = params.get(key, default)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not float(value) > 0:  # type: ignore[arg-type]
        raise ConfigError(f"aggregation.{key}: must be a finite number > 0, got {value!r}",
                          reason="invalid_aggregation_params")
    return float(value)  # type: ignore[arg-type]


_AT_LEAST_ONE_WHY = {"max_share": "1 = equal shares; no share below 1/n can be met",
                     "outlier_multiple": "1 = flag every clipped step; below 1 would flag steps it does not clip"}


def _at_least_one(params: Mapping[str, object], key: str, default: float) -> float:
    value = params.get(key, default)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not float(value) >= 1:  # type: ignore[arg-type]
        raise ConfigError(f"aggregation.{key}: must be a finite number >= 1 ({_AT_LEAST_ONE_WHY[key]}), "
                          f"got {value!r}", reason="invalid_aggregation_params")
    return float(value)  # type: ignore[arg-type]


def _agreement(params: Mapping[str, object]) -> float:
    value = params.get("min_class_agreement", DEFAULT_MIN_CLASS_AGREEMENT)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not -1 <= float(value) <= 1:  # type: ignore[arg-type]
        raise ConfigError(f"aggregation.min_class_agreement: must be a number in [-1, 1] (a mean cosine; -1 = off), "
                          f"got {value!r}", reason="invalid_aggregation_params")
    return float(value)  # type: ignore[arg-type]


def bounded_fedavg(
    results: Results,
    *,
    reference: NDArrays,
    count_multiple: float = DEFAULT_COUNT_MULTIPLE,
    norm_multiple: float = DEFAULT_NORM_MULTIPLE,
    max_share: float = DEFAULT_MAX_SHARE,
    outlier_multiple: float = DEFAULT_OUTLIER_MULTIPLE,
    min_class_agreement: float = DEFAULT_MIN_CLASS_AGREEMENT,
) -> NDArrays:
    """FedAvg with each device's influence bounded: the QFLARE default (:func:`bounded_fedavg_with_outcome`)."""
    return bounded_fedavg_with_outcome(
        results, reference=reference, count_multiple=count_multiple, norm_multiple=norm_multiple, max_share=max_share,
        outlier_multiple=outlier_multiple, min_class_agreement=min_class_agreement,
    ).arrays


def bounded_fedavg_with_outcome(
    results: Results,
    *,
    reference: NDArrays,
    count_multiple: float = DEFAULT_COUNT_MULTIPLE,
    norm_multiple: float = DEFAULT_NORM_MULTIPLE,
    max_share: float = DEFAULT_MAX_SHARE,
    outlier_multiple: float = DEFAULT_OUTLIER_MULTIPLE,
    min_class_agreement: float = DEFAULT_MIN_CLASS_AGREEMENT,
    exclude_flagged: bool = True,
) -> RuleOutcome:
    """FedAvg with each device's influence bounded: the QFLARE default.

    1. Each claimed ``num_examples`` is capped at ``count_multiple`` times the round's median claim
       (:func:`qflare.fl.influence.cap_round_num_examples`), so a device claiming 10^7 samples among
       peers claiming 100 weighs as if it claimed ``3 x 100``.
    2. The largest capped claims are lowered further until no update holds more than
       ``max_share / n`` of the round's weight (:func:`qflare.fl.influence.cap_weight_shares`). The
       median cap alone does not bound a *group*: with 30 % of the devices claiming the cap, 6
       inflaters of 20 hold ``6 x 3 = 18`` median units against the 14 honest devices' ~14. The share
       cap holds whatever the claims: any ``k`` of ``n`` updates weigh at most ``k * max_share / n``
       (with the default ``max_share = 1``, exactly their share of the devices: equal weights).
    3. Each step ``x_i - reference`` is clipped to ``norm_multiple`` times the round's median step
       norm ``M``, and the clipped steps are averaged with those weights (norm-bounded FedAvg, Sun et
       al. 2019, :func:`qflare.fl.robust.norm_bound`).

    Bound: with fewer than half the updates hostile, ``M`` is at most an honest step norm, and ``k``
    hostile updates move the aggregate away from the (same-weighted) average of the honest clipped
    steps by at most ``W * 2 * norm_multiple * M``, where ``W <= min(1, k * max_share / n)`` is their
    total weight: ``W * (mean hostile step - mean honest step)``, each mean of norm at most
    ``norm_multiple * M``. This bounds the size of the damage per round; it does not make the
    direction honest (30 % sign-flipped steps still pull the model back by up to 30 %).

    The outcome's verdicts (:attr:`RuleOutcome.flagged`, which feed reputation and quarantine) are
    the updates whose claim exceeded the median cap (step 1), whose step norm exceeded
    ``outlier_multiple`` times the clip bound (default 2: over 4 x the median step norm), whose
    step points away from the round's coordinate-wise median step (cosine below -0.1,
    :func:`qflare.fl.robust.median_step`, :func:`qflare.fl.robust.opposed_steps`: sign flipping and IPM
    send such steps at any norm; the median, not the aggregate, because a step is part of the aggregate
    it would be judged against, and with few devices a large flipped step pulls the aggregate to itself),
    and, for a classifier, whose output layer
    disagrees with the round's class by class (:func:`qflare.fl.robust.class_agreement` below
    ``min_class_agreement``, default 0; the layer is :func:`qflare.fl.robust.output_layer`, none for a
    regressor; -1 turns the check off): label flipping sends honest-looking steps whose rows for each
    class point at another class's features. A step clipped by less than ``outlier_multiple`` is
    clipped but not flagged: on Dirichlet(0.5) digits honest devices cross the bound itself now and then,
    and flagging them got an honest device quarantined in a clean 20-round run. Lowering a weight to the
    share cap (step 2) is not a verdict either: with ``max_share = 1`` every honest device above the
    smallest claim is lowered.

    Flagged updates are also left out of the round's aggregate (``exclude_flagged``, not a config key):
    a second pass runs steps 1-3 over the updates that were neither over the claim cap, opposed nor
    disagreeing, with their own median claim and median step norm, so 30 % sign flippers no longer pull
    the round back before reputation quarantines them. A far step is not left out (it is clipped to the
    bound already; leaving such honest steps out got an honest device quarantined in the clean 20-round
    digits run). The second pass runs only while the updates it keeps are more than half of the round;
    otherwise the first pass stands (the bound above assumes an honest majority). The verdicts are the
    first pass's; a left-out update's weight is 0 and its verdict ``"excluded"``.

    Raises
    ------
    ConfigError
        A bad ``count_multiple``, ``norm_multiple`` (not > 0), ``max_share``, ``outlier_multiple`` (not
        >= 1) or ``min_class_agreement`` (not in [-1, 1]).
    AggregationError
        No updates, inconsistent tensors, or a total weight of zero.
    """
    if not results:
        raise AggregationError("no updates to aggregate", reason="no_updates")
    if not (math.isfinite(outlier_multiple) and outlier_multiple >= 1):
        raise ConfigError(f"aggregation.outlier_multiple: must be a finite number >= 1, got {outlier_multiple!r}",
                          reason="invalid_aggregation_params")
    if not (math.isfinite(min_class_agreement) and -1 <= min_class_agreement <= 1):
        raise ConfigError(f"aggregation.min_class_agreement: must be a number in [-1, 1] (-1 = off), got "
                          f"{min_class_agreement!r}", reason="invalid_aggregation_params")
    first, leave_out = _bounded_pass(results, reference, count_multiple, norm_multiple, max_share, outlier_multiple,
                                     min_class_agreement)
    n = len(results)
    kept = [i for i in range(n) if i not in leave_out]
    if not exclude_flagged or not leave_out or 2 * len(kept) <= n:
        return first
    # Second pass over the unflagged updates only: their own median claim, share cap and median step norm. Its
    # verdicts are not used (the round's are the first pass's), so it computes none: no median step, no class check.
    second, _ = _bounded_pass([results[i] for i in kept], reference, count_multiple, norm_multiple, max_share,
                              outlier_multiple, None, verdicts=False)
    weights = [0.0] * n
    for j, i in enumerate(kept):
        weights[i] = second.weights[j]
    return RuleOutcome(
        arrays=second.arrays,
        selected=tuple(kept[j] for j in second.selected),
        weights=tuple(weights),
        flagged=first.flagged,
        clipped=tuple(kept[j] for j in second.clipped),
        scores=first.scores,
    )


def _bounded_pass(results: Results, reference: NDArrays, count_multiple: float, norm_multiple: float,
                  max_share: float, outlier_multiple: float, min_class_agreement: float | None,
                  *, verdicts: bool = True) -> tuple[RuleOutcome, set[int]]:
    """Steps 1-3 of :func:`bounded_fedavg_with_outcome` over ``results``: the outcome with every verdict, and
    the verdicts that leave an update out (all but a far step's: that one is clipped to the bound already).
    ``verdicts=False``: the aggregate, weights and clipping only (no opposed check: it costs a coordinate-wise
    median of the steps)."""
    claimed = [int(n) for _, n in results]
    capped = cap_round_num_examples(claimed, median_multiple=count_multiple)
    weights = cap_weight_shares(capped, max_share=max_share)
    # flag_beyond=inf: the outcome's flags are the opposed steps only; far steps are told apart below
    outcome = norm_bound_with_outcome(results, reference=reference, median_multiple=norm_multiple, weights=weights,
                                      flag_beyond=math.inf, flag_opposed=verdicts)
    norms = outcome.scores
    limit = norm_bound_from_median(list(norms), multiple=norm_multiple)
    far = {i for i, s in enumerate(norms) if s > limit and s > outlier_multiple * limit}
    out = set(outcome.flagged) | {i for i, (c, k) in enumerate(zip(claimed, capped, strict=True)) if k < c}
    layer = output_layer(ModelSpec.from_arrays(results[0][0]))
    if min_class_agreement is not None and min_class_agreement > -1 and layer is not None and len(results) >= 3:
        agreement = class_agreement(results, reference=reference, layer=layer)
        centre = float(np.median(agreement))
        low = centre - CLASS_OUTLIER_MADS * 1.4826 * float(np.median(np.abs(agreement - centre)))
        out |= {i for i in range(len(results)) if agreement[i] < min_class_agreement and agreement[i] < low}
    return dataclasses.replace(outcome, flagged=tuple(sorted(out | far))), out


class BoundedFedAvg(Strategy):
    """FedAvg with capped sample counts and clipped steps (:func:`bounded_fedavg`); the default rule.

    Parameters
    ----------
    count_multiple:
        Cap on a claim as a multiple of the round's median claim (default 3.0).
    norm_multiple:
        Cap on a step's L2 norm as a multiple of the round's median step norm (default 2.0).
    max_share:
        Cap on one update's share of the round's weight, as a multiple of ``1 / n`` (default 1.0:
        equal weights; ``>= 1``). Any ``k`` of ``n`` updates then hold at most ``k * max_share / n``.
    outlier_multiple:
        A step over this multiple of its norm bound is flagged (default 2.0; ``>= 1``).
    min_class_agreement:
        An update whose output layer's mean per-class cosine to the round's median rows is below this
        is flagged and left out (default 0.0; in [-1, 1], -1 = off; classifiers only).

    Keeps every update of the round (memory ``n x model``): the medians need all claims and norms.
    Flagged updates (but far steps) are left out of the round's aggregate
    (:func:`bounded_fedavg_with_outcome`).
    """

    name = "bounded-fedavg"
    needs_reference = True

    def __init__(self, **params: Any) -> None:
        self.check_params(params)
        self.count_multiple = _positive(params, "count_multiple", DEFAULT_COUNT_MULTIPLE)
        self.norm_multiple = _positive(params, "norm_multiple", DEFAULT_NORM_MULTIPLE)
        self.max_share = _at_least_one(params, "max_share", DEFAULT_MAX_SHARE)
        self.outlier_multiple = _at_least_one(params, "outlier_multiple", DEFAULT_OUTLIER_MULTIPLE)
        self.min_class_agreement = _agreement(params)

    @classmethod
    def check_params(cls, params: Mapping[str, object]) -> None:
        """Keys ``count_multiple`` and ``norm_multiple`` (finite numbers > 0), ``max_share`` and
        ``outlier_multiple`` (>= 1), ``min_class_agreement`` (in [-1, 1])."""
        for key in params:
            if key not in _BOUNDED_PARAMS:
                accepted = ", ".join(sorted(_BOUNDED_PARAMS))
                raise ConfigError(
                    f"aggregation.{key}: not a parameter of {cls.name} (accepted: {accepted})",
                    reason="invalid_aggregation_params",
                )
        for key, default in (("count_multiple", DEFAULT_COUNT_MULTIPLE), ("norm_multiple", DEFAULT_NORM_MULTIPLE)):
            _positive(params, key, default)
        _at_least_one(params, "max_share", DEFAULT_MAX_SHARE)
        _at_least_one(params, "outlier_multiple", DEFAULT_OUTLIER_MULTIPLE)
        _agreement(params)

    def aggregate(self, results: Results) -> NDArrays:
        """Not available without the base model: use :meth:`accumulator` with ``reference``."""
        raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        """A buffered accumulator applying :func:`bounded_fedavg` relative to ``reference``."""
        if reference is None:
            raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")
        base = reference

        def run(results: Results) -> RuleOutcome:
            return bounded_fedavg_with_outcome(
                results, reference=base, count_multiple=self.count_multiple, norm_multiple=self.norm_multiple,
                max_share=self.max_share, outlier_multiple=self.outlier_multiple,
                min_class_agreement=self.min_class_agreement,
            )

        return BufferedAccumulator(spec, outcome_fn=run)

    def __repr__(self) -> str:
        return (f"BoundedFedAvg(count_multiple={self.count_multiple}, norm_multiple={self.norm_multiple}, "
                f"max_share={self.max_share}, outlier_multiple={self.outlier_multiple}, "
                f"min_class_agreement={self.min_class_agreement})")


ROBUST_STRATEGIES: tuple[type[Strategy], ...] = (
    BoundedFedAvg,
    Median,
    TrimmedMean,
    Krum,
    MultiKrum,
    Bulyan,
    CenteredClipping,
    NormBound,
)
"""Registered in :data:`qflare.fl.strategies.STRATEGIES` (with FLTrust, from its own module)."""
