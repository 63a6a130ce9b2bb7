"""Digits accuracy under central DP (epsilon 1, 3, 8 at delta 1e-5) against no DP, in-process simulation.

Usage: ``.venv/bin/python benchmarks/privacy_table.py [--rounds 20] [--clients 10] [--clip 1.0]``; prints a
Markdown table (the one in docs/privacy.md) and writes benchmarks/privacy_results.json.
Every client takes part in every round (sampling rate 1); the accountant (dp-accounting RDP) picks the
noise multiplier that spends the target epsilon in exactly ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qflare.fl.privacy import DPFixedClipping, PrivacyAccountant, noise_for_epsilon
from qflare.fl.simulation import run_inprocess
from qflare.fl.strategies import FedAvg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: the task's)")
    args = parser.parse_args()
    from qflare.fl.tasks import get_task

    train = get_task("digits").default_train_config()
    if args.epochs is not None:
        train = train.model_copy(update={"epochs": args.epochs})
    rows = []
    for eps in [None, *(float(e) for e in args.epsilons.split(","))]:
        tic = time.perf_counter()
        if eps is None:
            strategy, accountant, z = FedAvg(), None, None
        else:
            z = noise_for_epsilon(eps, 1.0, args.rounds, args.delta)
            strategy = DPFixedClipping(FedAvg(), clip=args.clip, noise_multiplier=z, seed=args.seed)
            accountant = PrivacyAccountant(z, args.delta, budget=eps + 1e-6)
        history = run_inprocess("digits", args.clients, args.rounds, seed=args.seed, strategy=strategy,
                                accountant=accountant, train_config=train)
        last = history[-1]
        rows.append({"target_epsilon": eps, "noise_multiplier": z, "rounds": len(history),
                     "accuracy": last.metrics["accuracy"], "best_accuracy": max(m.metrics["accuracy"] for m in history),
                     "epsilon": last.privacy["epsilon"] if last.privacy else None,
                     "diverged": sum(m.diverged for m in history), "trainings": args.clients * len(history),
                     "seconds": time.perf_counter() - tic})
        print(json.dumps(rows[-1]), flush=True)
    settings = vars(args)
    Path(__file__).with_name("privacy_results.json").write_text(json.dumps({"settings": settings, "rows": rows},
                                                                           indent=2))
    print(f"\ndigits, {args.clients} clients, {args.rounds} rounds, {train.epochs} local epoch(s), all clients per "
          f"round, clip {args.clip}, "
          f"delta {args.delta}, seed {args.seed}\n")
    print("| central DP | noise multiplier z | epsilon spent (RDP) | final accuracy | best accuracy | "
          "local trainings stopped on overflow |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "none" if r["target_epsilon"] is None else f"epsilon {r['target_epsilon']:g}"
        z_s = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.2f}"
        e_s = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(f"| {name} | {z_s} | {e_s} | {r['accuracy']:.3f} | {r['best_accuracy']:.3f} | "
              f"{r['diverged']} of {r['trainings']} |")


if __name__ == "__main__":
    main()
