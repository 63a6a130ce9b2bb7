"""Aggregation rules as pure functions over :data:`~qflare.types.NDArrays`, plus accumulators.

The pure functions (``fedavg`` here; robust rules such as Krum, trimmed mean and median go next
to it) take every client result at once, like Flower's ``aggregate.py``. An :class:`Accumulator`
takes them one at a time as they arrive: :class:`FedAvgAccumulator` keeps one running weighted
sum (float64, fed through a float32 partial sum), so an enclave holds O(model) memory however many
clients report, and rules that need all updates at once run through :class:`BufferedAccumulator`.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from qflare.errors import AggregationError, UpdateRejected
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

if TYPE_CHECKING:
    from qflare.fl.robust import RuleOutcome

__all__ = [
    "Accumulator",
    "AccumulatorState",
    "AggregateFn",
    "BufferedAccumulator",
    "FedAvgAccumulator",
    "fedavg",
]

_PARTIAL = "\x00fedavg.partial/"
_PARTIAL_COUNT = "\x00fedavg.partial_count"
"""Keys of :class:`FedAvgAccumulator`'s float32 partial sums in its state (no tensor name starts with NUL)."""

AggregateFn = Callable[[Sequence[tuple[NDArrays, int]]], NDArrays]
"""A pure aggregation rule: ``[(arrays, num_examples), ...] -> arrays``."""


def fedavg(results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
    """Average the clients' arrays weighted by their number of examples (McMahan et al., 2017).

    Sums in float64 and returns each tensor in its input dtype, in the first result's order.

    Raises
    ------
    AggregationError
        No results, tensors that differ between results, or a total weight of zero.
    UpdateRejected
        A negative or non-integer ``num_examples`` (reason ``invalid_num_examples``).
    """
    if not results:
        raise AggregationError("no updates to aggregate", reason="no_updates")
    spec = ModelSpec.from_arrays(results[0][0])
    for arrays, num_examples in results:
        _check_weight(num_examples)
        _check_same_spec(spec, arrays)
    total = sum(int(n) for _, n in results)
    if total == 0:
        raise AggregationError("total number of examples is zero", reason="zero_weight")
    averaged: NDArrays = {}
    for name, tensor in spec.items():
        weighted = [np.asarray(arrays[name], dtype=np.float64) * int(n) for arrays, n in results]
        averaged[name] = (np.sum(weighted, axis=0) / total).astype(tensor.dtype)
    return averaged


@dataclass(frozen=True)
class AccumulatorState:
    """What a checkpoint must keep of an accumulator to rebuild it exactly.

    ``arrays`` are the accumulator's own tensors (a running sum, or every buffered update), ``weights``
    the ``num_examples`` of each buffered update (empty for a streaming rule).
    """

    count: int
    total_examples: int
    arrays: NDArrays = field(repr=False)
    weights: tuple[int, ...] = ()


class Accumulator(ABC):
    """Collects ``(arrays, num_examples)`` updates one at a time, then yields the aggregate.

    Every update is validated against ``spec`` (names, shapes, dtypes, finite values) before it
    touches the state, so a rejected update leaves the accumulator unchanged.

    Parameters
    ----------
    spec:
        The model's tensors; updates that do not match raise ``ModelSpecMismatch`` /
        ``NonFiniteValues`` from :meth:`ModelSpec.validate`.
    """

    last_outcome: RuleOutcome | None = None
    """The rule's verdict per update (indices in :meth:`add` order) from the last :meth:`result`, for
    rules that give one (the robust rules, bounded FedAvg); ``None`` for streaming FedAvg."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._count = 0
        self._total_examples = 0

    def add(self, arrays: Mapping[str, np.ndarray], num_examples: int, *, finite_checked: bool = False) -> None:
        """Validate one update and fold it in.

        ``finite_checked``: the caller has already checked these very arrays for NaN/Inf against this
        spec (:func:`qflare.fl.checks.parse_update` does), so that pass over every value is not repeated;
        names, shapes and dtypes are checked all the same.
        """
        _check_weight(num_examples)
        self.spec.validate(arrays, check_finite_values=not finite_checked)
        self._add(arrays, int(num_examples))
        self._count += 1
        self._total_examples += int(num_examples)

    @property
    def count(self) -> int:
        """Number of updates added."""
        return self._count

    @property
    def total_examples(self) -> int:
        """Sum of ``num_examples`` over the updates added."""
        return self._total_examples

    def result(self) -> NDArrays:
        """The aggregate of everything added so far (the accumulator stays usable)."""
        if self._count == 0:
            raise AggregationError("no updates to aggregate", reason="no_updates")
        if self._total_examples == 0:
            raise AggregationError("total number of examples is zero", reason="zero_weight")
        return self._result()

    def state(self, *, copy: bool = True) -> AccumulatorState:
        """A copy of everything needed to rebuild this accumulator (for sealed checkpoints).

        ``copy=False``: the arrays may be read-only views of the live state, valid only until the next
        :meth:`add`, for a caller that serialises them at once (a checkpoint joins them into its plaintext
        anyway, so a copy first would be one more pass over the whole state).
        """
        return AccumulatorState(self._count, self._total_examples,
                                *(self._views() if not copy and self._views_match_export() else self._export()))

    def _views_match_export(self) -> bool:
        """Whether the class that defines :meth:`_export` also defines :meth:`_views` (a subclass that
        exports more than its parent, but not as views, gets its copies)."""
        definer = next(c for c in type(self).__mro__ if "_export" in c.__dict__)
        return "_views" in definer.__dict__

    def from_state(self, state: AccumulatorState) -> Accumulator:
        """Load ``state`` (made by :meth:`state` of the same kind of accumulator and spec); returns ``self``."""
        if state.count < 0 or state.total_examples < 0:
            raise AggregationError("accumulator state has negative counts", reason="bad_accumulator_state")
        self._import(state)
        self._count = state.count
        self._total_examples = state.total_examples
        return self

    @abstractmethod
    def _export(self) -> tuple[NDArrays, tuple[int, ...]]: ...

    def _views(self) -> tuple[NDArrays, tuple[int, ...]]:
        """:meth:`_export` without the copies, where a rule can give them (default: :meth:`_export`)."""
        return self._export()

    @abstractmethod
    def _import(self, state: AccumulatorState) -> None: ...

    @abstractmethod
    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None: ...

    @abstractmethod
    def _result(self) -> NDArrays: ...


class FedAvgAccumulator(Accumulator):
    """Streaming FedAvg: one flat running weighted sum, O(model) memory.

    float32 tensors are summed in two stages: up to :attr:`FOLD` weighted updates in a float32
    partial sum, in cache-sized chunks (``np.multiply``/``np.add`` with ``out=``: no temporaries the
    size of the model), which is then folded into the float64 running sum. The fold is done chunk by
    chunk in the pass of the next update, which writes its weighted values over the folded chunk
    (no separate pass over the sums, no zeroing, one add fewer per group). Other dtypes go straight
    into the float64 sum. The result equals :func:`fedavg` over the same updates (float64) to within
    ``|streamed - fedavg| <= (FOLD + 1) * 2**-24 * sum(n_i |x_i|) / sum(n_i)`` elementwise plus one
    float32 spacing of the result, in any order (tested): a partial sum of ``k <= FOLD`` products
    ``fl(n_i * x_i)`` evaluated in float32 is a recursive inner product, whose error is at most
    ``k * 2**-24 * sum(n_i |x_i|)`` for any ``k`` (Jeannerod and Rump, SIAM J. Matrix Anal. Appl.
    34(2), 2013; barring overflow and underflow), and the float64 folds and the division add less
    than ``2**-24 * sum(n_i |x_i|) / sum(n_i)`` more below 2**29 groups. With ``FOLD = 15`` that is
    ``2**-20``, the bound stated when ``FOLD`` was 8 (as ``2 * FOLD * 2**-24``).

    Parameters
    ----------
    spec:
        The model's tensors (see :class:`Accumulator`).
    """

    FOLD = 15
    """float32 updates summed before their partial sum is folded into the float64 running sum (the error
    bound is ``(FOLD + 1) * 2**-24`` of the weighted magnitudes: 15 keeps it at ``2**-20``)."""
    _CHUNK = 1 << 16
    """Elements per step of :meth:`_add`: its scratch (256 KiB float32, 512 KiB float64) and the chunks it
    reads stay in the CPU's L2 cache, and the per-chunk Python overhead is small (64 Ki beat 8-32 Ki and
    128 Ki in CPU time per update, docs/benchmarks.md "Aggregation")."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if any(name.startswith("\x00") for name in spec):
            raise AggregationError("tensor names must not start with NUL", reason="inconsistent_results")
        # Don't keep the updates: only their weighted sum, one flat buffer for the whole model.
        self._slots: dict[str, tuple[int, int, int | None]] = {}  # name -> (offset, size, float32 offset)
        at = at32 = 0
        for name, t in spec.items():
            size = t.size
            self._slots[name] = (at, size, at32 if t.dtype == "float32" else None)
            at += size
            at32 += size if t.dtype == "float32" else 0
        self._sum = np.zeros(at, dtype=np.float64)
        self._part = np.zeros(at32, dtype=np.float32)
        self._in_part = 0
        self._scratch = np.empty(self._CHUNK, dtype=np.float64)
        self._scratch32 = np.empty(self._CHUNK, dtype=np.float32)

    def _fold(self) -> None:
        """Add the float32 partial sum into the float64 sum (one float64 rounding) and clear it."""
        if self._in_part == 0:
            return
        for start, size, start32 in self._slots.values():
            if start32 is not None:
                dst = self._sum[start : start + size]
                np.add(dst, self._part[start32 : start32 + size], out=dst)
        self._part[...] = 0
        self._in_part = 0

    def _export(self) -> tuple[NDArrays, tuple[int, ...]]:
        views, weights = self._views()
        return {name: a.copy() for name, a in views.items()}, weights

    def _views(self) -> tuple[NDArrays, tuple[int, ...]]:
        # Exactly the live state, partial sum included (not folded: when the partial is folded depends only
        # on the updates counted, so a restored accumulator rounds exactly as an uninterrupted one).
        arrays: NDArrays = {}
        for name, (a, n, a32) in self._slots.items():
            shape = self.spec[name].shape
            arrays[name] = _read_only(self._sum[a : a + n].reshape(shape))
            if a32 is not None:
                arrays[_PARTIAL + name] = _read_only(self._part[a32 : a32 + n].reshape(shape))
        arrays[_PARTIAL_COUNT] = np.array(float(self._in_part))
        return arrays, ()

    def _import(self, state: AccumulatorState) -> None:
        expected = set(self._slots) | {_PARTIAL + k for k, (_, _, a32) in self._slots.items() if a32 is not None}
        if set(state.arrays) != expected | {_PARTIAL_COUNT} or state.weights:
            raise AggregationError("accumulator state does not match the spec", reason="bad_accumulator_state")
        in_part = float(np.asarray(state.arrays[_PARTIAL_COUNT]).reshape(-1)[0])
        if not (in_part.is_integer() and 0 <= in_part <= self.FOLD):
            raise AggregationError("accumulator state: bad partial count", reason="bad_accumulator_state")
        for name, (a, n, a32) in self._slots.items():
            shape = self.spec[name].shape
            value = np.asarray(state.arrays[name], dtype=np.float64)
            if value.shape != shape:
                raise AggregationError(f"accumulator state: {name} has the wrong shape", reason="bad_accumulator_state")
            self._sum[a : a + n] = value.reshape(-1)
            if a32 is not None:
                part = np.asarray(state.arrays[_PARTIAL + name])
                if part.shape != shape or part.dtype != np.float32:
                    raise AggregationError(f"accumulator state: partial {name} is not float32 of its shape",
                                           reason="bad_accumulator_state")
                self._part[a32 : a32 + n] = part.reshape(-1)
        self._in_part = int(in_part)

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        # Weighted in place: a cache-sized chunk of n * x goes into a reused scratch buffer, then is added
        # (no float64 copy of the update, no temporaries the size of a tensor). The first update of a
        # group is written straight into the partial sum, each chunk after the previous group's chunk has
        # been folded into the float64 sum while it is in cache (the same additions as a separate fold).
        weight = float(num_examples)
        weight32 = np.float32(weight)
        in_part = float(weight32) == weight  # exact in float32 (num_examples < 2^24, always for updates)
        if not in_part:
            self._fold()
        fold = in_part and self._in_part >= self.FOLD
        write = in_part and (fold or self._in_part == 0)
        chunk = self._CHUNK
        for name, (start, size, start32) in self._slots.items():
            src = np.asarray(arrays[name]).reshape(-1)
            if start32 is not None and in_part:
                dst32 = self._part[start32 : start32 + size]
                if write:
                    sum32 = self._sum[start : start + size]
                    for lo in range(0, size, chunk):
                        hi = min(lo + chunk, size)
                        d32 = dst32[lo:hi]
                        if fold:
                            s64 = sum32[lo:hi]
                            np.add(s64, d32, out=s64)
                        np.multiply(src[lo:hi], weight32, out=d32)
                    continue
                for lo in range(0, size, chunk):
                    hi = min(lo + chunk, size)
                    t32, d32 = self._scratch32[: hi - lo], dst32[lo:hi]
                    np.multiply(src[lo:hi], weight32, out=t32)
                    np.add(d32, t32, out=d32)
            else:
                dst = self._sum[start : start + size]
                for lo in range(0, size, chunk):
                    hi = min(lo + chunk, size)
                    t, d = self._scratch[: hi - lo], dst[lo:hi]
                    np.multiply(src[lo:hi], weight, out=t, dtype=np.float64, casting="unsafe")
                    np.add(d, t, out=d)
        if in_part and self._part.size:
            self._in_part = 1 if write else self._in_part + 1

    def _result(self) -> NDArrays:
        # Folded into a copy: the state (and so every later result) does not depend on when this is called.
        out: NDArrays = {}
        for name, (a, n, a32) in self._slots.items():
            t = self.spec[name]
            total = self._sum[a : a + n].copy()
            if a32 is not None:
                np.add(total, self._part[a32 : a32 + n], out=total)
            np.divide(total, self._total_examples, out=total)
            out[name] = total.astype(t.dtype).reshape(t.shape)
        return out


class BufferedAccumulator(Accumulator):
    """Keeps every update and applies a pure rule at the end: for rules that need them all.

    Parameters
    ----------
    spec:
        The model's tensors (see :class:`Accumulator`).
    aggregate_fn:
        The rule, e.g. :func:`fedavg` or a robust rule with the same signature.
    outcome_fn:
        Instead of ``aggregate_fn``: a rule returning a :class:`~qflare.fl.robust.RuleOutcome`, kept
        as :attr:`last_outcome`.
    """

    def __init__(
        self,
        spec: ModelSpec,
        aggregate_fn: AggregateFn | None = None,
        *,
        outcome_fn: Callable[[Sequence[tuple[NDArrays, int]]], RuleOutcome] | None = None,
    ) -> None:
        super().__init__(spec)
        if (aggregate_fn is None) == (outcome_fn is None):
            raise TypeError("give exactly one of aggregate_fn and outcome_fn")
        self._aggregate_fn = aggregate_fn
        self._outcome_fn = outcome_fn
        self._results: list[tuple[NDArrays, int]] = []

    def _export(self) -> tuple[NDArrays, tuple[int, ...]]:
        arrays = {
            f"{i}/{name}": np.array(a, copy=True) for i, (upd, _) in enumerate(self._results) for name, a in upd.items()
        }
        return arrays, tuple(n for _, n in self._results)

    def _views(self) -> tuple[NDArrays, tuple[int, ...]]:
        arrays = {
            f"{i}/{name}": _read_only(a.view()) for i, (upd, _) in enumerate(self._results) for name, a in upd.items()
        }
        return arrays, tuple(n for _, n in self._results)

    def _import(self, state: AccumulatorState) -> None:
        results: list[tuple[NDArrays, int]] = []
        for i, n in enumerate(state.weights):
            try:
                # a sealed checkpoint stores float64: back to each tensor's dtype (exact for float32)
                upd = {name: np.array(state.arrays[f"{i}/{name}"], dtype=t.dtype) for name, t in self.spec.items()}
            except KeyError:
                raise AggregationError(f"accumulator state lacks update {i}", reason="bad_accumulator_state") from None
            self.spec.validate(upd)
            results.append((upd, int(n)))
        if len(state.arrays) != len(results) * len(self.spec) or len(results) != state.count:
            raise AggregationError("accumulator state does not match its weights", reason="bad_accumulator_state")
        self._results = results

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        self._results.append(({name: np.array(arrays[name], copy=True) for name in self.spec}, num_examples))

    def _result(self) -> NDArrays:
        if self._outcome_fn is not None:
            self.last_outcome = self._outcome_fn(self._results)
            return self.last_outcome.arrays
        assert self._aggregate_fn is not None
        return self._aggregate_fn(self._results)


def _read_only(view: np.ndarray) -> np.ndarray:
    view.flags.writeable = False  # a view of the live state: its reader must not change the sum
    return view


def _check_weight(num_examples: object) -> None:
    if not isinstance(num_examples, numbers.Integral) or isinstance(num_examples, bool) or int(num_examples) < 0:
        raise UpdateRejected(
            f"num_examples must be a non-negative integer, got {num_examples!r}", reason="invalid_num_examples"
        )


def _check_same_spec(spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> None:
    got = ModelSpec.from_arrays(arrays)
    if dict(got) != dict(spec):  # same tensors; their order may differ
        raise AggregationError(
            f"results disagree on tensors: {spec.fingerprint()[:12]} vs {got.fingerprint()[:12]}",
            reason="inconsistent_results",
        )
