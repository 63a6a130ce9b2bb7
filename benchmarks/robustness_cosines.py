"""Per-round cosines of every step in one robustness-table cell of the default configuration (diagnostics).

    .venv/bin/python benchmarks/robustness_cosines.py diag sign-flip traffic        # the default, as it is now
    .venv/bin/python benchmarks/robustness_cosines.py diag sign-flip traffic old    # with the old verdict
    .venv/bin/python benchmarks/robustness_cosines.py drop                          # FedAvg without the attackers

``diag``: the default configuration (bounded FedAvg + quarantine 3 of 5, seed 0, the table's clients, rounds 10 for
traffic and 20 for digits) with a bounded FedAvg that logs, for each round, every step's L2 norm and its cosine to the
first-pass aggregate step (``cos_first``), to the round's aggregate (``cos_second``), to the coordinate-wise median
step (``cos_median``) and to the aggregate without itself (``cos_loo``, equal weights and the 2 x median clip).
``old`` judges opposition against the first-pass aggregate, as before 2026-12-02. ``drop``: plain FedAvg on traffic
over the honest devices only (the malicious ones train but are left out of every aggregate). Prints JSON.
The output of 2026-12-02 is ``benchmarks/results/robustness-traffic-signflip-cosines.json``, from an untidied copy of
this script (same computation; this copy was checked by ruff only, not re-run).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np
import torch

import qflare.fl.robust as robust
from qflare.fl.aggregate import Accumulator, BufferedAccumulator
from qflare.fl.poisoning import Poisoner, choose_malicious
from qflare.fl.simulation import run_inprocess
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import get_strategy
from qflare.fl.strategies.base import Strategy
from qflare.fl.strategies.robust import BoundedFedAvg, bounded_fedavg_with_outcome
from qflare.fl.tasks import get_task
from qflare.types import NDArrays

LOG: list[dict[str, Any]] = []


def _flat(arrays: NDArrays, names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in names])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class LoggingBoundedFedAvg(BoundedFedAvg):
    """The default rule, logging each round's norms and cosines into :data:`LOG`."""

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        assert reference is not None
        base = reference

        def run(results: Any) -> robust.RuleOutcome:
            names = sorted(base)
            ref = _flat(base, names)
            steps = np.stack([_flat(a, names) - ref for a, _ in results])
            first = bounded_fedavg_with_outcome(results, reference=base, exclude_flagged=False)
            out = bounded_fedavg_with_outcome(results, reference=base)
            a1, a2 = _flat(first.arrays, names) - ref, _flat(out.arrays, names) - ref
            med = np.median(steps, axis=0)
            norms = np.linalg.norm(steps, axis=1)
            fac = np.minimum(1.0, 2.0 * np.median(norms) / np.maximum(norms, 1e-12)) / len(results)
            LOG.append({"flagged": list(out.flagged), "n": len(results), "norms": norms.tolist(),
                        "cos_first": [_cos(s, a1) for s in steps], "cos_second": [_cos(s, a2) for s in steps],
                        "cos_median": [_cos(s, med) for s in steps],
                        "cos_loo": [_cos(s, a1 - c * s) for s, c in zip(steps, fac, strict=True)]})
            return out

        return BufferedAccumulator(spec, outcome_fn=run)


class DropFedAvg(Strategy):
    """FedAvg over the results whose position is not in ``drop`` (every client takes part: position = id)."""

    name = "drop-fedavg"

    def __init__(self, drop: list[int]) -> None:
        self.drop = set(drop)

    def aggregate(self, results: Any) -> NDArrays:
        return get_strategy("fedavg").aggregate([r for i, r in enumerate(results) if i not in self.drop])


def main() -> int:
    mode = sys.argv[1]
    attack = sys.argv[2] if len(sys.argv) > 2 else "sign-flip"
    task = sys.argv[3] if len(sys.argv) > 3 else "traffic"
    if "old" in sys.argv[4:]:
        # before 2026-12-02: opposed to the first-pass aggregate (norm_bound_with_outcome's output step)
        original = robust.norm_bound_with_outcome

        def old_rule(*args: Any, **kwargs: Any) -> robust.RuleOutcome:
            flag_opposed = kwargs.pop("flag_opposed", False)
            outcome = original(*args, **kwargs)
            if not flag_opposed:
                return outcome
            results, reference = args[0], kwargs["reference"]
            names = sorted(reference)
            ref = _flat(reference, names)
            steps = np.stack([_flat(a, names) - ref for a, _ in results])
            extra = robust.opposed_steps(steps, _flat(outcome.arrays, names) - ref)
            return dataclasses.replace(outcome, flagged=tuple(sorted(set(outcome.flagged) | set(extra))))

        import qflare.fl.strategies.robust as strategies_robust
        strategies_robust.norm_bound_with_outcome = old_rule  # type: ignore[assignment]
    t = get_task(task)
    n, rounds = (10, 10) if task == "traffic" else (20, 20)
    torch.set_num_threads(1)
    mal = [int(i) for i in choose_malicious([str(i) for i in range(n)], 0.3, seed=0)]
    tic = time.perf_counter()
    if mode == "diag":
        params = {"n": n, "f": len(mal)} if attack == "alie" else {}
        poisoner = None if attack == "clean" else Poisoner(attack, params, num_classes=getattr(t, "num_classes", None))
        h = run_inprocess(t, n, rounds, seed=0, strategy=LoggingBoundedFedAvg(),
                          partition="dirichlet" if task == "digits" else None, alpha=0.5, attack=poisoner,
                          malicious=mal, reputation=(3, 5))
        print(json.dumps({"malicious": mal, "mae": h[-1].metrics[t.metric],
                          "quarantined": [r.quarantined for r in h], "rounds": LOG,
                          "seconds": time.perf_counter() - tic}))
    else:
        h = run_inprocess(t, n, 10, seed=0, strategy=DropFedAvg(mal))
        print(json.dumps({"malicious": mal, "mae_per_round": [r.metrics[t.metric] for r in h],
                          "seconds": time.perf_counter() - tic}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
