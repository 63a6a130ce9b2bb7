"""CKKS against plaintext FedAvg over real HTTP (``qflare simulate``): accuracy, bytes on the wire, time.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/he_http_table.py [--rounds 20] [--clients 10]``;
prints the Markdown table of docs/privacy.md ("CKKS over HTTP") and writes
benchmarks/results/he_http.json (``--out`` elsewhere).

Two runs of :func:`qflare.sim.runner.run_simulation` on the same seeded settings (digits, Dirichlet 0.5,
the task's training, all clients every round, ``enclave: none``, FedAvg): ``he: none`` (plaintext
safetensors updates, the server evaluates) and ``he: ckks`` (the devices encrypt ``num_examples x update``,
the server sums the ciphertexts, the operator's side decrypts each published aggregate and evaluates it on
the same test set). The devices' cost lines (``cost_log``) give the HTTP bodies both ways (the envelope of
the upload and the sealed model download, as sent and received; HTTP headers not counted) and their
encode/decode/train times; the rounds' metrics give the server's time (validate + add every update, and
the aggregation at close). The runs share two cores with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qflare.config import TrainConfig
from qflare.fl.tasks import get_task
from qflare.sim.runner import SimulationConfig, run_simulation


def run(he: str, *, rounds: int, clients: int, seed: int, runs_dir: Path) -> dict[str, Any]:
    task = get_task("digits")
    sim = SimulationConfig(task="digits", clients=clients, rounds=rounds, seed=seed, enclave="none",
                           aggregator="fedavg", he=he, runs_dir=runs_dir,
                           train=TrainConfig.model_validate(task.default_train_config().model_dump()))
    tic = time.perf_counter()
    summary = run_simulation(sim)
    summary["bench_wall_seconds"] = round(time.perf_counter() - tic, 2)
    return summary


def _kb(x: float) -> str:
    return f"{x / 1000:,.0f} kB"


def _ms(x: float) -> str:
    return f"{x * 1000:,.1f} ms"


def table(plain: dict[str, Any], ckks: dict[str, Any]) -> str:
    rows = ["| mode | final accuracy | upload per device (envelope) | download per device (sealed model) | "
            "device: encode | device: decode | device: upload round trip | server: validate + add (round) | "
            "server: aggregate (round) | round |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in (("plaintext FedAvg", plain), ("CKKS", ckks)):
        c = s["costs"]
        rows.append(f"| {name} | {s['final_accuracy']:.3f} | {_kb(c['device_upload_bytes'])} | "
                    f"{_kb(c['device_download_bytes'])} | {_ms(c['device_encode_seconds'])} | "
                    f"{_ms(c['device_decode_seconds'])} | {_ms(c['device_upload_seconds'])} | "
                    f"{_ms(c['server_update_seconds_per_round'])} | {_ms(c['server_aggregate_seconds_per_round'])} | "
                    f"{c['round_seconds']:.1f} s |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/he_http.json"))
    args = ap.parse_args()
    plain = run("none", rounds=args.rounds, clients=args.clients, seed=args.seed, runs_dir=args.runs_dir)
    ckks = run("ckks", rounds=args.rounds, clients=args.clients, seed=args.seed, runs_dir=args.runs_dir)
    out = {"settings": {"task": "digits", "rounds": args.rounds, "clients": args.clients, "seed": args.seed,
                        "partition": "dirichlet(0.5)", "enclave": "none", "rule": "fedavg", "transport": "HTTP"},
           "plaintext": plain, "ckks": ckks,
           "accuracy_gap_points": 100 * (plain["final_accuracy"] - ckks["final_accuracy"]),
           "upload_ratio": ckks["costs"]["device_upload_bytes"] / plain["costs"]["device_upload_bytes"],
           "download_ratio": ckks["costs"]["device_download_bytes"] / plain["costs"]["device_download_bytes"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(table(plain, ckks))
    for name, run_summary in (("plaintext", plain), ("ckks", ckks)):
        c = run_summary["costs"]
        how = " (decrypted)" if name == "ckks" else ""
        print(f"{name}: the devices' own accuracy of model v{c['devices_evaluated_model_version']}{how} on their "
              f"local data, mean {c['devices_local_metric_mean']:.3f}")
    print(f"\naccuracy gap {out['accuracy_gap_points']:+.2f} points; upload x{out['upload_ratio']:.1f}, "
          f"download x{out['download_ratio']:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
