"""``python -m qflare.fl``: run an in-process federated simulation and print per-round metrics.

Example::

    python -m qflare.fl --task digits --clients 10 --rounds 20 --alpha 0.5 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from qflare.fl.simulation import RoundMetrics, run_inprocess
from qflare.fl.tasks import TASKS, get_task
from qflare.fl.train import TrainConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the simulation, print a line per round and a JSON summary."""
    parser = argparse.ArgumentParser(prog="python -m qflare.fl", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--partition", default=None, help="dirichlet|iid (digits), sensor|iid (forecasting)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="CSV series for the forecasting tasks")
    parser.add_argument("--epochs", type=int, help="override the task's default local epochs")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", choices=("sgd", "adam"))
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    defaults = task.default_train_config().as_kwargs()
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "momentum": args.momentum,
    }
    config = TrainConfig(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})
    print(f"task={task.name} clients={args.clients} rounds={args.rounds} {config}", flush=True)

    def report(m: RoundMetrics) -> None:
        slowest = max(m.client_seconds)
        print(
            f"round {m.round:3d}  {task.metric}={m.metrics[task.metric]:.4f}  loss={m.metrics['loss']:.4f}  "
            f"train_loss={m.train_loss:.4f}  round={m.seconds:.2f}s  slowest_client={slowest:.2f}s",
            flush=True,
        )

    history = run_inprocess(
        task,
        args.clients,
        args.rounds,
        partition=args.partition,
        alpha=args.alpha,
        seed=args.seed,
        train_config=config,
        csv_path=args.csv,
        on_round=report,
    )
    summary: dict[str, object] = {
        "task": task.name,
        "final": history[-1].metrics,
        "mean_round_seconds": sum(m.seconds for m in history) / len(history),
        "mean_client_seconds": sum(sum(m.client_seconds) for m in history)
        / sum(len(m.client_seconds) for m in history),
    }
    naive = getattr(task, "naive_baseline", None)
    if naive is not None:
        summary["naive"] = naive(task.test_dataset(seed=args.seed, csv_path=args.csv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
