"""``qflare bench round``: round time with N virtual clients in one process, against its parts measured alone.

``rounds`` rounds of :func:`qflare.fl.simulation.run_inprocess` (every client trains locally with the
task's defaults, its update is serialised, parsed and validated into the streaming FedAvg, the new model
is evaluated on the test set). Baselines from the same run:

- *local training*: the sum of the clients' local-training times within the round (what one process must
  spend whatever the framework does: the round's floor);
- *aggregation alone*: N updates of the same model, serialised, parsed and added to a fresh
  :class:`~qflare.fl.aggregate.FedAvgAccumulator`, timed on its own (best of ``repeat``).

The round's overhead is the round time minus the local training; the median round is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from qflare.fl.aggregate import FedAvgAccumulator
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.fl.simulation import run_inprocess
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays

__all__ = ["aggregation_alone", "run"]


def aggregation_alone(task_name: str, clients: int, *, repeat: int = 3, seed: int = 0) -> float:
    """Best time (s) to serialise, parse and FedAvg ``clients`` updates of ``task_name``'s model."""
    task = get_task(task_name)
    base = get_arrays(task.build_model(seed))
    spec = task.model_spec()
    rng = np.random.default_rng(seed)
    updates = [({k: v + rng.standard_normal(v.shape, dtype=np.float32) * np.float32(0.01) for k, v in base.items()},
                int(rng.integers(10, 200))) for _ in range(clients)]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        acc = FedAvgAccumulator(spec)
        for arrays, n in updates:
            parsed, _ = load_arrays(dump_arrays(arrays), spec)
            acc.add(parsed, n)
        acc.result()
        best = min(best, time.perf_counter() - t0)
    return best


def run(*, clients: int = 50, rounds: int = 3, task: str = "digits", seed: int = 0) -> dict[str, Any]:
    """Measure (see the module docstring); times in seconds."""
    history = run_inprocess(task, clients, rounds, seed=seed)
    round_s = [m.seconds for m in history]
    train_s = [sum(m.client_seconds) for m in history]
    agg = aggregation_alone(task, clients, seed=seed)
    median_round, median_train = statistics.median(round_s), statistics.median(train_s)
    params = sum(a.size for a in get_arrays(get_task(task).build_model(seed)).values())
    return {
        "task": task, "clients": clients, "rounds": len(history), "params": params,
        "round_seconds": median_round,
        "local_training_seconds": median_train,
        "aggregation_alone_seconds": agg,
        "overhead_seconds": median_round - median_train,
        "round_x_local_training": median_round / median_train,
        "round_x_aggregation": median_round / agg,
        "final_metric": history[-1].metrics.get(get_task(task).metric),
    }
