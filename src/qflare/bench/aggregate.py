"""Aggregation benchmark: the streaming FedAvg accumulator and the robust rules on n x d float32 updates.

Baselines are measured in the same run, on the same updates:

- *copy*: ``np.copyto`` of every update into a preallocated n x d float32 matrix (one read and one
  write of each value: what any rule that touches every value costs at least);
- *Flower-style*: FedAvg as Flower's ``aggregate_inplace`` computes it (scale each client's tensors
  by ``n_i / total``, then ``np.add`` them layer by layer). Flower is not a QFLARE dependency, so this
  is a re-implementation of its arithmetic, not Flower's code.

Throughput is update bytes in per second (n x d x 4 bytes / time). The streaming accumulator is
timed twice: ``_add`` alone (the arithmetic) and ``add`` (with the spec and finiteness checks every
update goes through). The copy, Flower-style FedAvg and the accumulator alternate, repetition by
repetition, so machine noise hits them alike; times are the best of ``repeat`` calls, and their
median is given too, as is the median process CPU time (``x_copy_cpu``: the copy's CPU time over
the figure's, which a loaded machine disturbs less than wall time). Peak memory is tracemalloc's
peak (NumPy allocations) during one further, untimed call.

``production``: the production path (envelope decrypt + parse + validate + accumulate inside the
simulated enclave) on ``production_clients`` x ``production_params`` against Flower's
``aggregate_inplace`` on the same values, alternating, medians (:mod:`qflare.bench.production`).
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from qflare.fl.aggregate import FedAvgAccumulator
from qflare.fl.robust import ROBUST_RULES
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["make_updates", "run"]


def make_updates(clients: int, params: int, *, seed: int = 0) -> list[tuple[NDArrays, int]]:
    """``clients`` updates of four float32 tensors, ``params`` values in all."""
    rng = np.random.default_rng(seed)
    sizes = [params // 2, params // 4, params // 8, params - params // 2 - params // 4 - params // 8]
    return [
        ({f"t{i}": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(sizes)}, int(rng.integers(50, 500)))
        for _ in range(clients)
    ]


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float]:
    """Best and median wall time of ``repeat`` untraced calls, and the tracemalloc peak (MiB) of one more."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs), statistics.median(runs), _peak_MiB(fn)


def _peak_MiB(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def _alternating(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process CPU times of ``repeat`` calls of each, alternating (the order reversed every other
    repetition)."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    order = list(fns)
    for rep in range(repeat):
        for name in order if rep % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            times[name][1].append(time.process_time() - c0)
            times[name][0].append(time.perf_counter() - t0)
    return times


def _flower_style(results: list[tuple[NDArrays, int]]) -> list[np.ndarray]:
    total = sum(n for _, n in results)
    scale = [n / total for _, n in results]
    params = [scale[0] * x for x in results[0][0].values()]
    for (arrays, _), s in zip(results[1:], scale[1:], strict=True):
        params = [np.add(p, s * x) for p, x in zip(params, arrays.values(), strict=True)]
    return params


def run(*, clients: int = 100, params: int = 1_000_000, f: int = 10, repeat: int = 2,
        rules: bool = True, production: bool = False, production_clients: int = 20,
        production_params: int = 10_000_000) -> dict[str, Any]:
    """Measure everything; return the figures (times in s, rates in GB/s, memory in MiB)."""
    results = make_updates(clients, params)
    spec = ModelSpec.from_arrays(results[0][0])
    nbytes = clients * params * 4
    gb = nbytes / 1e9
    matrix = np.empty((clients, params), dtype=np.float32)

    def copy() -> None:
        for i, (arrays, _) in enumerate(results):
            at = 0
            for a in arrays.values():
                np.copyto(matrix[i, at:at + a.size], a)
                at += a.size

    def stream(validate: bool) -> Callable[[], None]:
        def go() -> None:
            acc = FedAvgAccumulator(spec)
            for arrays, n in results:
                if validate:
                    acc.add(arrays, n)
                else:
                    acc._add(arrays, n)
            acc._total_examples = sum(n for _, n in results)
            acc._count = len(results)
            acc.result()
        return go

    figures: dict[str, Any] = {"clients": clients, "params": params, "update_MiB_total": round(nbytes / 2**20, 1),
                               "numpy": np.__version__}
    fns = {"copy": copy, "flower_style_fedavg": lambda: _flower_style(results),
           "streaming_fedavg_arithmetic": stream(False), "streaming_fedavg_add_validated": stream(True)}
    copy()  # fault the matrix in before anything is timed
    times = _alternating(fns, repeat)
    copy_wall, copy_cpu = times["copy"]
    copy_s, copy_med, copy_cpu_med = min(copy_wall), statistics.median(copy_wall), statistics.median(copy_cpu)
    for name, fn in fns.items():
        wall, cpu = times[name]
        s, med, cpu_med = min(wall), statistics.median(wall), statistics.median(cpu)
        figures[name] = {"seconds": s, "median_seconds": med, "cpu_seconds_median": cpu_med, "GB_per_s": gb / s,
                         "peak_MiB": _peak_MiB(fn), "runs_seconds": wall}
        if name != "copy":
            figures[name] |= {"x_copy_bandwidth": copy_s / s, "x_copy_bandwidth_median": copy_med / med,
                              "x_copy_cpu": copy_cpu_med / cpu_med if cpu_med > 0 else None,
                              "x_copy_bandwidth_per_repetition": [c / w for c, w in zip(copy_wall, wall, strict=True)]}
    if rules:
        for rule, kw in (("median", {}), ("trimmed-mean", {"beta": 0.1}), ("krum", {"f": f}),
                         ("multi-krum", {"f": f})):
            s, _, mem = _timed(lambda r=rule, k=kw: ROBUST_RULES[r](results, **k), 1)  # type: ignore[misc]
            # (one timed and one traced call each: the rules take seconds)
            figures[rule] = {"seconds": s, "x_copy_time": s / copy_s, "peak_MiB": mem, **kw}
    if production:
        from qflare.bench.production import run as run_production

        del results, matrix  # the production inputs are larger: free these first
        figures["production"] = run_production(clients=production_clients, params=production_params,
                                               repeat=max(repeat, 1))
    return figures
