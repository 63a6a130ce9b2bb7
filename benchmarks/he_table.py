"""CKKS (TenSEAL) against plaintext FedAvg on the same seeded run: accuracy, bytes and time per round.

Usage: ``.venv/bin/python benchmarks/he_table.py [--rounds 20] [--clients 10]``; prints the Markdown table of
docs/privacy.md and writes benchmarks/he_results.json (``--out`` elsewhere).

In-process simulation (:func:`qflare.fl.simulation.run_inprocess`, ``he_context=``): the devices encrypt
``num_examples x update`` under the operator's context, an accumulator built from the public context alone
sums the ciphertexts, and the devices decrypt the sum (FedAvg). Bytes are the payloads a device would
upload and download (the envelopes' own overhead, the same in both modes, is left out). The plaintext
times are measured on the run's last round: a device's ``dump_arrays`` and the server's ``load_arrays`` and
FedAvg accumulation of every update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from qflare.fl.he import make_context
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.fl.simulation import RoundMetrics, run_inprocess
from qflare.fl.strategies import FedAvg
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays


def _plaintext_costs(clients: int, seed: int) -> dict[str, float]:
    task = get_task("digits")
    spec = task.model_spec()
    update = get_arrays(task.build_model(seed))
    tic = time.perf_counter()
    blobs = [dump_arrays(update) for _ in range(clients)]
    encode = (time.perf_counter() - tic) / clients
    tic = time.perf_counter()
    acc = FedAvg().accumulator(spec)
    for b in blobs:
        arrays, _ = load_arrays(b, spec)
        acc.add(arrays, 100)
    model = acc.result()
    server = time.perf_counter() - tic
    tic = time.perf_counter()
    down = dump_arrays(model)
    load_arrays(down, spec)
    decode = time.perf_counter() - tic
    return {"bytes_up": len(blobs[0]), "bytes_down": len(down), "device_up_seconds": encode,
            "server_seconds": server, "device_down_seconds": decode}


def _summary(history: list[RoundMetrics], clients: int) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": history[-1].metrics["accuracy"],
                           "best_accuracy": max(m.metrics["accuracy"] for m in history),
                           "round_seconds": statistics.mean(m.seconds for m in history)}
    if history[-1].he is not None:
        he = [m.he for m in history if m.he is not None]
        out.update(bytes_up=statistics.mean(h["bytes_up"] for h in he) / clients,
                   bytes_down=statistics.mean(h["bytes_down"] for h in he),
                   device_up_seconds=statistics.mean(h["encrypt_seconds"] for h in he) / clients,
                   server_seconds=statistics.mean(h["sum_seconds"] for h in he),
                   device_down_seconds=statistics.mean(h["decrypt_seconds"] for h in he))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("he_results.json"))
    args = parser.parse_args()
    plain = _summary(run_inprocess("digits", args.clients, args.rounds, seed=args.seed), args.clients)
    plain.update(_plaintext_costs(args.clients, args.seed))
    print(json.dumps({"plaintext": plain}), flush=True)
    ckks = _summary(run_inprocess("digits", args.clients, args.rounds, seed=args.seed, he_context=make_context()),
                    args.clients)
    print(json.dumps({"ckks": ckks}), flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "plaintext": plain, "ckks": ckks}, indent=2))
    print(f"\ndigits, {args.clients} clients (Dirichlet 0.5), {args.rounds} rounds, the task's training, FedAvg, "
          f"seed {args.seed}; CKKS N=8192, moduli 60/40/40/60, scale 2^40\n")
    print("| mode | final accuracy | best accuracy | upload per device | download per device | device: encode "
          "(encrypt) | server: aggregate | device: decode (decrypt) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("plaintext FedAvg", plain), ("CKKS", ckks)):
        print(f"| {name} | {r['accuracy']:.3f} | {r['best_accuracy']:.3f} | {r['bytes_up'] / 1e3:,.0f} kB | "
              f"{r['bytes_down'] / 1e3:,.0f} kB | {r['device_up_seconds'] * 1e3:,.1f} ms | "
              f"{r['server_seconds'] * 1e3:,.1f} ms | {r['device_down_seconds'] * 1e3:,.1f} ms |")


if __name__ == "__main__":
    main()
