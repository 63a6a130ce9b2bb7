"""N concurrent authenticated devices against one real ``qflare server`` on 127.0.0.1 (issue 12, "Load").

    .venv/bin/python benchmarks/load_devices.py 200 500 1000            # SQLite, 2 rounds each
    .venv/bin/python benchmarks/load_devices.py 1000 --rounds 1 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test    # a fresh schema, dropped after
    .venv/bin/python benchmarks/load_devices.py 500 --rounds 1 --workers 2 [--enclave] [--task digits] \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test    # qflare server --workers 2

Each N is one server process (``task: digits-wide``: 996,938 parameters, 4 MB updates; ``enclave.backend:
none``) and N device coroutines in this process that enroll, heartbeat, long-poll ``/v1/device/task?wait=10``
and upload a full-size update sealed with a one-time key, every device in every round
(:mod:`qflare.bench.load`). Prints per N: acknowledged vs recorded uploads (lost, double counted), upload
latency p50/p99 and an upload's wait with the server's busy answers (backpressure), updates/s and MB/s,
the server's peak RSS; writes every figure to
``benchmarks/results/load_devices.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from qflare.bench.load import LoadConfig, main_quiet

RESULTS = Path(__file__).resolve().parent / "results"


def _row(r: dict[str, Any]) -> str:
    lat = r["upload_latency_seconds"]
    return (f"{r['devices']:>5} {r['task']} {r['database']:>10} {r['workers']}w{' enclave' if r['enclave'] else ''} "
            f"{r['acknowledged']:>6}/{r['recorded']:<6} lost {len(r['lost'])} "
            f"double {r['double_counted']} unacked {len(r['unacknowledged'])} | p50 {lat['p50']:.2f} s p99 "
            f"{lat['p99']:.2f} s (wait p50 {r['upload_wait_seconds']['p50']:.1f} s p99 "
            f"{r['upload_wait_seconds']['p99']:.1f} s, {r['busy_answers']} busy) | "
            f"{r['updates_per_s']:.1f} upd/s {r['MB_per_s']:.0f} MB/s | server peak "
            f"{r['server_peak_rss_MiB']:.0f} MiB | loop lag max {r['loop_lag_seconds']['max']:.2f} s | errors "
            f"{r['errors'] or 0} {r['stopped']}{' ' + str(r['unfinished_devices']) if r['unfinished_devices'] else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("devices", type=int, nargs="*", default=[200, 500, 1000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--postgres", default=None, help="PostgreSQL URL: run on a fresh schema of it")
    ap.add_argument("--long-poll", type=float, default=10.0)
    ap.add_argument("--seal-threads", type=int, default=2)
    ap.add_argument("--download", action="store_true", help="also download the global model each round")
    ap.add_argument("--max-inflight", type=int, default=0,
                    help="at most this many uploads sealed or in flight at once (0: every device at once)")
    ap.add_argument("--max-rss-mib", type=float, default=14 * 1024,
                    help="stop a run when the server and this process together use more resident memory")
    ap.add_argument("--workers", type=int, default=1, help="qflare server --workers K (needs --postgres)")
    ap.add_argument("--enclave", action="store_true", help="the simulated enclave (one, shared by the workers)")
    ap.add_argument("--task", default="digits-wide", help="digits-wide (4 MB updates) or digits (154 KB)")
    ap.add_argument("--devices-per-client", type=int, default=LoadConfig.devices_per_client,
                    help="devices sharing one httpx.AsyncClient (its connection pool costs its size squared)")
    ap.add_argument("--out", type=Path, default=RESULTS / "load_devices.json")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    for n in args.devices:
        cfg = LoadConfig(devices=n, rounds=args.rounds, postgres=args.postgres, long_poll_seconds=args.long_poll,
                         seal_threads=args.seal_threads, download=args.download, max_inflight=args.max_inflight,
                         max_rss_mib=args.max_rss_mib, workers=args.workers, enclave=args.enclave, task=args.task,
                         devices_per_client=args.devices_per_client)
        print(f"--- {n} devices, {args.rounds} rounds", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            r = main_quiet(cfg, lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        except Exception as exc:  # noqa: BLE001 - report how a size failed, then stop (larger ones would too)
            traceback.print_exc()
            runs.append({"devices": n, "failed": f"{type(exc).__name__}: {exc}",
                         "seconds": time.perf_counter() - t0})
            break
        runs.append(r)
        print(_row(r), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
