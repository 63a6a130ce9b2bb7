"""Time and peak memory of the robust aggregation rules at fleet scale (default 100 x 1M float32).

    .venv/bin/python benchmarks/bench_robust.py [--clients 100] [--params 1000000] [--f 10]

Each rule runs once on the same updates (four float32 tensors, 1M values in all by default), with
tracemalloc on so the peak of NumPy's allocations during the call is reported (the inputs are
allocated before, so the peak is the rule's own working memory). The baseline, measured in the same
run, is one plain copy of all the updates into a preallocated ``n x d`` float32 matrix: the least
any rule that needs every update at once must do (``np.stack`` of the concatenated updates is shown
too; it makes two copies). ``x copy`` is a rule's time over the baseline's. Each rule runs
``--repeat`` times (default 2); the best time and the largest peak are reported.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from qflare.fl.aggregate import fedavg
from qflare.fl.robust import (
    bulyan,
    centered_clipping,
    fltrust,
    krum,
    median,
    multi_krum,
    norm_bound,
    trimmed_mean,
)
from qflare.types import NDArrays


def _updates(clients: int, params: int, seed: int) -> list[tuple[NDArrays, int]]:
    rng = np.random.default_rng(seed)
    sizes = [params // 2, params // 4, params // 8]
    sizes.append(params - sum(sizes))
    results = []
    for _ in range(clients):
        arrays = {f"layer{i}.weight": rng.standard_normal(size, dtype=np.float32) for i, size in enumerate(sizes)}
        results.append((arrays, int(rng.integers(50, 500))))
    return results


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    tracemalloc.reset_peak()
    start_current, _ = tracemalloc.get_traced_memory()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    return elapsed, (peak - start_current) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=10, help="Byzantine updates tolerated (Krum, Bulyan)")
    parser.add_argument("--only", nargs="*", help="rule names to run (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per rule; the best time is reported")
    args = parser.parse_args()

    results = _updates(args.clients, args.params, seed=0)
    root = results[0][0]
    n, d, f = args.clients, args.params, args.f

    def fill() -> np.ndarray:
        matrix = np.empty((n, d), dtype=np.float32)
        for row, (arrays, _) in zip(matrix, results, strict=True):
            lo = 0
            for a in arrays.values():
                row[lo : lo + a.size] = a.ravel()
                lo += a.size
        return matrix

    rules: dict[str, Callable[[], object]] = {
        "copy baseline (n x d fill)": fill,
        "np.stack of concatenated updates": lambda: np.stack(
            [np.concatenate([a.ravel() for a in r.values()]) for r, _ in results]
        ),
        "fedavg": lambda: fedavg(results),
        "median": lambda: median(results),
        "trimmed-mean (beta=0.1)": lambda: trimmed_mean(results, beta=0.1),
        f"krum (f={f})": lambda: krum(results, f=f),
        f"multi-krum (f={f}, m=n-f)": lambda: multi_krum(results, f=f),
        f"bulyan (f={f})": lambda: bulyan(results, f=f),
        "centered-clipping (L=3)": lambda: centered_clipping(results, iterations=3),
        "norm-bound": lambda: norm_bound(results),
        "fltrust": lambda: fltrust(results, root=root),
    }
    if args.only:
        rules = {k: v for k, v in rules.items() if k.startswith(("copy", "np.")) or k.split(" ")[0] in args.only}

    input_mb = n * d * 4 / 2**20
    print(f"{n} updates x {d:,} float32 parameters = {input_mb:.0f} MiB of updates; numpy {np.__version__}")
    tracemalloc.start()
    rows = []
    baseline = None
    for name, fn in rules.items():
        runs = [_measure(fn) for _ in range(max(1, args.repeat))]
        elapsed, peak = min(t for t, _ in runs), max(p for _, p in runs)
        if baseline is None:
            baseline = elapsed
        rows.append((name, elapsed, peak))
        print(f"  {name}: {elapsed:.2f} s, peak {peak:.0f} MiB", flush=True)
    tracemalloc.stop()

    assert baseline is not None
    print()
    print("| rule | time (s) | x copy | peak extra memory (MiB) | x input |")
    print("|---|---:|---:|---:|---:|")
    for name, elapsed, peak in rows:
        print(f"| {name} | {elapsed:.2f} | {elapsed / baseline:.1f} | {peak:.0f} | {peak / input_mb:.2f} |")


if __name__ == "__main__":
    main()
