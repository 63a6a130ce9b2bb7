"""Where the production aggregation path's CPU goes, step by step (issue 9, docs/benchmarks.md "Aggregation").

    .venv/bin/python benchmarks/aggregate_steps.py                  # 20 x 10M float32, 3 repetitions
    .venv/bin/python benchmarks/aggregate_steps.py --clients 20 --params 10000000 --repeat 3

In one process, each update goes through the steps the enclave runs on it (and the host's copy into
the shared region), with the same functions: the copy in (``mmap``), the enclave's private copy out,
X-Wing decapsulation + AES-GCM, SHA-256 of the plaintext, parse + spec + NaN/Inf + step norm, and
the accumulator's add. No IPC, no ledger-entry signature, no checkpoint: ``qflare bench aggregate``
times the real two-process path. Four variants alternate, repetition by repetition:

- *separate*: the NaN/Inf check as its own pass (``load_arrays`` checking values), then ``l2_norm``
  (the path before the fused check); *fused*: ``parse_update`` (the norm's pass is the check);
- *hash-thread*: SHA-256 on a worker thread while the main thread parses (as the enclave does);
  *hash-inline*: on the main thread first.

Figures: wall time per round of all updates (median), its ratio to Flower's ``aggregate_inplace``
timed in the same repetitions, and the main thread's CPU milliseconds per update for each step
(``time.thread_time``; the worker thread's hash is in ``process_cpu_total``). Writes
``benchmarks/results/aggregate_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qflare.bench.production import _updates, flower_aggregate_inplace, flower_bytes
from qflare.crypto.envelope import decrypt_envelope, parse_envelope, seal_request
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.signing import SigningKey
from qflare.enclave.trusted.boot import tune_malloc
from qflare.fl.aggregate import FedAvgAccumulator
from qflare.fl.checks import check_update_norm, parse_update, parse_update_metadata
from qflare.fl.serialize import dump_arrays, load_arrays, sha256_hex
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

RESULTS = Path(__file__).resolve().parent / "results"
_STEPS = ("host_put", "take", "decap_decrypt", "sha256_inline", "parse_validate_norm", "sha256_wait", "add")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tuned = tune_malloc()
    updates = _updates(args.clients, args.params, 0)
    spec = ModelSpec.from_arrays(updates[0][0])
    base = spec.zeros()
    flower_in = [(flower_bytes(a), n) for a, n in updates]
    payloads = [dump_arrays(a, {"num_examples": str(n)}) for a, n in updates]
    del updates
    kem = XWingPrivateKey.generate()
    device = SigningKey.generate()
    envelopes = [seal_request(device, kem.public_key(), device_id=f"d{i}", method="POST",
                              path="/v1/device/rounds/1/update", round_id=1, payload=p, now=time.time())[0]
                 for i, p in enumerate(payloads)]  # fmt: skip
    del payloads
    region = mmap.mmap(-1, max(len(e) for e in envelopes))
    pool = ThreadPoolExecutor(max_workers=2)

    def separate(payload: bytes) -> tuple[NDArrays, int]:
        arrays, meta = load_arrays(payload, spec, copy=False)  # checks NaN/Inf: its own pass
        num, _ = parse_update_metadata(meta)
        check_update_norm(arrays, None, reference=base)
        return arrays, num

    def fused(payload: bytes) -> tuple[NDArrays, int]:
        update = parse_update(payload, spec, max_norm=None, reference=base)
        return update.arrays, update.num_examples

    def one_round(fuse: bool, threaded: bool, steps: dict[str, float]) -> None:
        acc = FedAvgAccumulator(spec)
        for env in envelopes:
            t = time.thread_time()
            region[: len(env)] = env
            t1 = time.thread_time()
            data = region[: len(env)]
            t2 = time.thread_time()
            payload, _ = decrypt_envelope(parse_envelope(data, max_size=len(data)), kem, allowed_key_sources={"mlkem"})
            t3 = time.thread_time()
            digest = pool.submit(sha256_hex, payload) if threaded else None
            if digest is None:
                sha256_hex(payload)
            t4 = time.thread_time()
            arrays, num = (fused if fuse else separate)(payload)
            t5 = time.thread_time()
            if digest is not None:
                digest.result()
            t6 = time.thread_time()
            acc.add(arrays, num, finite_checked=True)
            t7 = time.thread_time()
            for name, a, b in zip(_STEPS, (t, t1, t2, t3, t4, t5, t6), (t1, t2, t3, t4, t5, t6, t7), strict=True):
                steps[name] += b - a
        acc.result()

    variants = {"separate+hash-thread": (False, True), "fused+hash-thread": (True, True),
                "fused+hash-inline": (True, False), "separate+hash-inline": (False, False)}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    steps_runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    flower_wall: list[float] = []
    flower_cpu: list[float] = []
    load = [os.getloadavg()]
    for rep in range(args.repeat + 1):  # the first repetition warms caches and is dropped
        t0, c0 = time.perf_counter(), time.process_time()
        flower_aggregate_inplace(flower_in)
        if rep:
            flower_wall.append(time.perf_counter() - t0)
            flower_cpu.append(time.process_time() - c0)
        for name in list(variants) if rep % 2 else list(variants)[::-1]:
            steps = dict.fromkeys(_STEPS, 0.0)
            t0, c0 = time.perf_counter(), time.process_time()
            one_round(*variants[name], steps)
            steps["process_cpu_total"] = time.process_time() - c0
            if rep:
                wall[name].append(time.perf_counter() - t0)
                steps_runs[name].append(steps)
    load.append(os.getloadavg())
    pool.shutdown()
    flower = statistics.median(flower_wall)
    out: dict[str, Any] = {
        "clients": args.clients, "params": args.params, "repeat": args.repeat, "malloc_tuned": tuned,
        "numpy": np.__version__, "loadavg_start_end": load,
        "flower_aggregate_inplace": {"median_s": flower, "runs_s": flower_wall,
                                     "cpu_ms_per_update": statistics.median(flower_cpu) / args.clients * 1e3},
    }
    for name in variants:
        med = statistics.median(wall[name])
        out[name] = {"median_s": med, "runs_s": wall[name], "vs_flower_speed": flower / med,
                     "cpu_ms_per_update": {s: round(statistics.median(r[s] for r in steps_runs[name])
                                                    / args.clients * 1e3, 2)
                                           for s in (*_STEPS, "process_cpu_total")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "aggregate_steps.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
