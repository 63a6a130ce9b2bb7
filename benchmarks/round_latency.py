"""Round latency with and without the task route's long-poll (issue 12, "Round latency").

    .venv/bin/python benchmarks/round_latency.py                 # the demo: 10 clients x 20 rounds, digits
    .venv/bin/python benchmarks/round_latency.py --clients 10 --rounds 20 --repeat 2

Runs ``qflare simulate`` (the runner behind it, over real HTTP, enclave on, the demo's split) with
``--long-poll 0`` (devices poll every 0.5 s: the baseline, measured in the same run) and with the
default ``--long-poll 10``, alternating when ``--repeat`` > 1, and prints wall time, median and p90 round
time (``metrics.csv`` ``round_seconds``: open to close), final accuracy, and the ratios. Writes
``benchmarks/results/round_latency.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from qflare.sim.runner import SimulationConfig, run_simulation

RESULTS = Path(__file__).resolve().parent / "results"


def _one(clients: int, rounds: int, long_poll: float, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = run_simulation(SimulationConfig(task="digits", clients=clients, rounds=rounds,
                                              long_poll_seconds=long_poll,
                                              runs_dir=work / f"lp{long_poll:g}-{time.monotonic_ns()}"))
    wall = time.perf_counter() - t0
    with (Path(summary["run_dir"]) / "metrics.csv").open() as f:
        rounds_s = sorted(float(r["round_seconds"]) for r in csv.DictReader(f) if r.get("round_seconds"))
    return {
        "long_poll_seconds": long_poll, "wall_seconds": wall, "rounds_completed": summary["rounds_completed"],
        "median_round_seconds": statistics.median(rounds_s),
        "p90_round_seconds": rounds_s[min(len(rounds_s) - 1, int(0.9 * len(rounds_s)))],
        "final_accuracy": summary.get("final_accuracy"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qflare-latency-") as tmp:
        for _ in range(args.repeat):
            for lp in (0.0, 10.0):
                runs.append(_one(args.clients, args.rounds, lp, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)

    def mean(lp: float, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["long_poll_seconds"] == lp)

    out = {
        "clients": args.clients, "rounds": args.rounds, "repeat": args.repeat, "runs": runs,
        "wall_ratio": mean(10.0, "wall_seconds") / mean(0.0, "wall_seconds"),
        "median_round_ratio": mean(10.0, "median_round_seconds") / mean(0.0, "median_round_seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "round_latency.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| polling | wall s | median round s | p90 round s | accuracy |")
    print("|---|---|---|---|---|")
    for lp, label in ((0.0, "every 0.5 s (baseline)"), (10.0, "long-poll 10 s")):
        print(f"| {label} | {mean(lp, 'wall_seconds'):.1f} | {mean(lp, 'median_round_seconds'):.3f} | "
              f"{mean(lp, 'p90_round_seconds'):.3f} | {mean(lp, 'final_accuracy'):.4f} |")
    print(f"ratios long-poll / baseline: wall {out['wall_ratio']:.3f}, median round {out['median_round_ratio']:.3f}")


if __name__ == "__main__":
    main()
