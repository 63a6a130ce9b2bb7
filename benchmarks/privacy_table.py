"""Digits accuracy under central DP (epsilon 1, 3, 8) and local DP (epsilon 8) at delta 1e-5, against no DP.

Usage: ``.venv/bin/python benchmarks/privacy_table.py [--rounds 20] [--clients 10] [--clip 1.0]
[--local-epsilons 8] [--max-grad-norm 1.0]``; prints a Markdown table (the one in docs/privacy.md) and writes
benchmarks/privacy_results.json (``--out`` to write elsewhere).

In-process simulation (:func:`qflare.fl.simulation.run_inprocess`), every client in every round.

- Central DP (user-level: a whole device): the accountant (dp-accounting RDP, sampling rate 1) picks the
  noise multiplier that spends the target epsilon in exactly ``--rounds`` rounds; each step is clipped to
  ``--clip``.
- Local DP (example-level, per device: DP-SGD with Opacus): each device's noise multiplier is picked by
  Opacus for its own shard (sampling rate ``batch_size / shard size``) so that ``--rounds`` rounds spend the
  target; every example's gradient is clipped to ``--max-grad-norm``. The epsilon column is the largest
  device's, as Opacus's RDP accountant reports it after the last round.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qflare.fl.privacy import DPFixedClipping, PrivacyAccountant, noise_for_epsilon
from qflare.fl.simulation import RoundMetrics, run_inprocess
from qflare.fl.strategies import FedAvg, Strategy
from qflare.fl.training_config import LocalDPConfig


def _row(mode: str, eps: float | None, z: Any, history: list[RoundMetrics], clients: int,
         tic: float) -> dict[str, Any]:
    last = history[-1]
    spent = last.privacy if mode == "central" else last.local_privacy
    return {"mode": mode, "target_epsilon": eps, "noise_multiplier": z, "rounds": len(history),
            "accuracy": last.metrics["accuracy"], "best_accuracy": max(m.metrics["accuracy"] for m in history),
            "epsilon": spent["epsilon"] if spent else None,
            "diverged": sum(m.diverged for m in history), "trainings": clients * len(history),
            "seconds": time.perf_counter() - tic}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--clip", type=float, default=1.0, help="central DP: L2 bound on each update's step")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", default="1,3,8", help="central DP targets (empty: none)")
    parser.add_argument("--local-epsilons", default="8", help="local DP targets (empty: none)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="local DP: L2 bound on each example's "
                        "gradient")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: the task's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("privacy_results.json"))
    args = parser.parse_args()
    from qflare.fl.tasks import get_task

    train = get_task("digits").default_train_config()
    if args.epochs is not None:
        train = train.model_copy(update={"epochs": args.epochs})
    runs: list[tuple[str, float | None]] = [("none", None)]
    runs += [("central", float(e)) for e in args.epsilons.split(",") if e]
    runs += [("local", float(e)) for e in args.local_epsilons.split(",") if e]
    rows = []
    for mode, eps in runs:
        tic = time.perf_counter()
        strategy: Strategy = FedAvg()
        accountant, z, config = None, None, train
        if mode == "central":
            assert eps is not None
            z = noise_for_epsilon(eps, 1.0, args.rounds, args.delta)
            strategy = DPFixedClipping(FedAvg(), clip=args.clip, noise_multiplier=z, seed=args.seed)
            accountant = PrivacyAccountant(z, args.delta, budget=eps + 1e-6)
        elif mode == "local":
            config = train.model_copy(update={"dp": LocalDPConfig(target_epsilon=eps, rounds=args.rounds,
                                                                  max_grad_norm=args.max_grad_norm,
                                                                  delta=args.delta)})
        history = run_inprocess("digits", args.clients, args.rounds, seed=args.seed, strategy=strategy,
                                accountant=accountant, train_config=config)
        if mode == "local":
            z = history[-1].local_privacy["noise_multipliers"] if history[-1].local_privacy else None
        rows.append(_row(mode, eps, z, history, args.clients, tic))
        print(json.dumps(rows[-1]), flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\ndigits, {args.clients} clients, {args.rounds} rounds, {train.epochs} local epoch(s), all clients per "
          f"round, central clip {args.clip}, local max grad norm {args.max_grad_norm}, delta {args.delta}, "
          f"seed {args.seed}\n")
    print("| DP | noise multiplier z | epsilon spent | final accuracy | best accuracy | "
          "local trainings stopped on overflow |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "none" if r["mode"] == "none" else f"{r['mode']}, epsilon {r['target_epsilon']:g}"
        z = r["noise_multiplier"]
        z_s = "-" if z is None else (f"{z[0]:.2f}-{z[1]:.2f} (per device)" if isinstance(z, list) else f"{z:.2f}")
        e_s = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}" + (" (largest device)" if r["mode"] == "local"
                                                                        else "")
        print(f"| {name} | {z_s} | {e_s} | {r['accuracy']:.3f} | {r['best_accuracy']:.3f} | "
              f"{r['diverged']} of {r['trainings']} |")


if __name__ == "__main__":
    main()
