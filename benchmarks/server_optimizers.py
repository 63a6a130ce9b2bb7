"""FedAvg against server optimizers (FedAvgM, FedAdam) in the in-process simulation, for docs/learning.md.

    .venv/bin/python benchmarks/server_optimizers.py [--rounds 10]

digits: 20 clients, Dirichlet(0.5); traffic: 10 clients, one sensor each; the tasks' default local
training; seed 0; every client in every round. Prints a Markdown table of the final metric.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from qflare.fl.simulation import run_inprocess
from qflare.fl.strategies import get_strategy
from qflare.fl.tasks import get_task

CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("fedavg", "fedavg", {}),
    ("fedavgm lr=1 momentum=0.9", "fedavgm", {"lr": 1.0, "momentum": 0.9}),
    ("fedavgm lr=1 momentum=0.5", "fedavgm", {"lr": 1.0, "momentum": 0.5}),
    ("fedadam eta=0.1", "fedadam", {"eta": 0.1}),
    ("fedadam eta=0.01", "fedadam", {"eta": 0.01}),
]
SETUP = {"digits": (20, "dirichlet"), "traffic": (10, None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tasks", default="digits,traffic")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for task_name in args.tasks.split(","):
        task = get_task(task_name)
        clients, partition = SETUP[task_name]
        for label, rule, params in CONFIGS:
            tic = time.perf_counter()
            h = run_inprocess(task, clients, args.rounds, partition=partition, alpha=0.5, seed=0,
                              strategy=get_strategy(rule, **params))
            curve = [m.metrics[task.metric] for m in h]
            best = max(curve) if task.higher_is_better else min(curve)
            rows.append(f"| {task_name} | {label} | {curve[-1]:.4f} | {best:.4f} | {time.perf_counter() - tic:.0f} |")
            print(rows[-1], flush=True)
    print(f"\n| task | strategy | final {args.rounds}-round metric | best round | seconds |\n|---|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
