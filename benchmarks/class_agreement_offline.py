"""Does the output layer separate label flippers from honest non-IID devices? The offline check behind
bounded FedAvg's class check (docs/robustness.md, "The class check").

    .venv/bin/python benchmarks/class_agreement_offline.py            # 10 label-flipping rounds, 20 clean

Runs digits (20 clients, Dirichlet(0.5), seed 0) with ``bounded-fedavg`` and the class check off
(``min_class_agreement=-1``), no quarantine, 30 % label flippers chosen as the robustness table does,
keeps each round's output-layer steps, and prints per-round AUCs (flippers positive) of several scores
and, for the clean run and the flipping run, how many device-rounds the check's two conditions flag.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from qflare.fl.poisoning import Poisoner, choose_malicious
from qflare.fl.robust import class_agreement, output_layer
from qflare.fl.simulation import run_inprocess
from qflare.fl.strategies.robust import CLASS_OUTLIER_MADS, BoundedFedAvg
from qflare.fl.tasks import get_task

N = 20


def capture(attack: str | None, rounds: int) -> tuple[list[dict[str, Any]], set[int]]:
    task = get_task("digits")
    layer = output_layer(task.model_spec())
    assert layer is not None
    names = [n for n in layer if n is not None]
    rec: list[dict[str, Any]] = []

    class Capturing(BoundedFedAvg):
        def accumulator(self, spec, *, reference=None):  # type: ignore[no-untyped-def]
            acc = super().accumulator(spec, reference=reference)
            run = acc._outcome_fn  # type: ignore[attr-defined]

            def wrapped(results):  # type: ignore[no-untyped-def]
                outcome = run(results)
                rec.append({"ref": {k: reference[k].copy() for k in names},
                            "ups": [{k: a[k].copy() for k in names} for a, _ in results],
                            "norms": list(outcome.scores)})
                return outcome

            acc._outcome_fn = wrapped  # type: ignore[attr-defined]
            return acc

    mal = {int(i) for i in choose_malicious([str(i) for i in range(N)], 0.3, seed=0)} if attack else set()
    poisoner = Poisoner(attack, {}, num_classes=10) if attack else None
    run_inprocess(task, N, rounds, partition="dirichlet", alpha=0.5, seed=0,
                  strategy=Capturing(min_class_agreement=-1.0), attack=poisoner, malicious=sorted(mal), reputation=None)
    return rec, mal


def auc(scores: np.ndarray, positive: set[int]) -> float:
    pos = np.array([scores[i] for i in range(len(scores)) if i in positive])
    neg = np.array([scores[i] for i in range(len(scores)) if i not in positive])
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def scores(r: dict[str, Any], layer: tuple[str, str | None]) -> dict[str, np.ndarray]:
    weight, bias = layer
    results = [(u, 1) for u in r["ups"]]
    rows = np.stack([np.concatenate([(u[weight] - r["ref"][weight]).ravel(),
                                     (u[bias] - r["ref"][bias]).ravel() if bias else np.zeros(0)]) for u in r["ups"]])
    med, mean = np.median(rows, axis=0), rows.mean(axis=0)
    centred = rows - med
    pc = np.linalg.svd(centred, full_matrices=False)[2][0]
    return {
        "per-class cosine to the median rows (the check)": -class_agreement(results, reference=r["ref"], layer=layer),
        "output layer's cosine to its median": np.array([-cos(x, med) for x in rows]),
        "output layer's cosine to its mean": np.array([-cos(x, mean) for x in rows]),
        "whole step's norm": np.array(r["norms"]),
        "first principal component (Tolpegin et al.)": np.abs(centred @ pc),
    }


def flags(r: dict[str, Any], layer: tuple[str, str | None], threshold: float, outlier: bool) -> set[int]:
    s = class_agreement([(u, 1) for u in r["ups"]], reference=r["ref"], layer=layer)
    centre = float(np.median(s))
    low = centre - CLASS_OUTLIER_MADS * 1.4826 * float(np.median(np.abs(s - centre)))
    return {i for i in range(len(s)) if s[i] < threshold and (not outlier or s[i] < low)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flip-rounds", type=int, default=10)
    ap.add_argument("--clean-rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    layer = output_layer(get_task("digits").model_spec())
    assert layer is not None
    flip, mal = capture("label-flip", args.flip_rounds)
    per: dict[str, list[float]] = {}
    for r in flip:
        for name, s in scores(r, layer).items():
            per.setdefault(name, []).append(auc(s, mal))
    print(f"label flipping, {args.flip_rounds} rounds, flippers {sorted(mal)}: per-round AUC (flippers positive)")
    for name, values in per.items():
        print(f"  {name}: mean {np.mean(values):.3f}, lowest {min(values):.3f} (round {int(np.argmin(values)) + 1})")
    clean, _ = capture(None, args.clean_rounds)
    for label, rec, bad in (("label flipping", flip, mal), ("clean", clean, set())):
        for outlier in (False, True):
            fl = [flags(r, layer, 0.0, outlier) for r in rec]
            honest = sum(len(f - bad) for f in fl)
            hostile = sum(len(f & bad) for f in fl)
            print(f"{label}: below 0{' and 2 MADs below the median' if outlier else ''}: honest {honest} of "
                  f"{(N - len(bad)) * len(rec)} device-rounds flagged, flippers {hostile} of {len(bad) * len(rec)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
