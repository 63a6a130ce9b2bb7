"""Centralised baseline: the same model and local settings, trained on the pooled training set.

The federated run sees each sample ``rounds x local epochs`` times; by default this trains for
as many epochs, so the two differ only in where the data sit.

    .venv/bin/python benchmarks/central_baseline.py --task digits --rounds 20
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qflare.fl.tasks import TASKS, get_task
from qflare.fl.train import train_local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument(
        "--rounds", type=int, default=20, help="federated rounds to match (epochs = rounds x local epochs)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the number of central epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    task = get_task(args.task)
    config = task.default_train_config()
    epochs = args.epochs or args.rounds * config.epochs
    train = task.client_dataset(0, 1, partition="iid", seed=args.seed)  # one partition = everything
    test = task.test_dataset(seed=args.seed)
    model = task.build_model(args.seed)
    print(f"task={task.name} train={len(train)} test={len(test)} epochs={epochs} {config}", flush=True)
    start = time.perf_counter()
    done = 0
    while done < epochs:
        # In chunks of the local epochs, with a fresh optimiser each, as a federated client trains.
        chunk = min(config.epochs, epochs - done)
        result = train_local(model, train, **{**config.as_kwargs(), "epochs": chunk}, seed=args.seed * 100_000 + done)
        done += chunk
        metrics = task.evaluate(model, test)
        print(
            f"epoch {done:4d}  train_loss={result.mean_loss:.4f}  {task.metric}={metrics[task.metric]:.4f}", flush=True
        )
    summary: dict[str, object] = {
        "task": task.name,
        "epochs": epochs,
        "final": task.evaluate(model, test),
        "seconds": round(time.perf_counter() - start, 2),
    }
    naive = getattr(task, "naive_baseline", None)
    if naive is not None:
        summary["naive"] = naive(test)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
