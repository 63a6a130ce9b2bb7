"""Wall time and peak memory of ``qflare simulate`` at several client counts (docs/benchmarks.md).

Peak memory is of the whole process tree (server, enclave, edge processes): the sum over the tree of each
process's PSS (proportional set size, so shared library pages count once), sampled every 0.5 s.

    .venv/bin/python benchmarks/simulate_scale.py 10 50 100 200 --rounds 2 [--devices-per-process 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(clients: int, rounds: int, extra: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qflare", "simulate", "--clients", str(clients), "--rounds", str(rounds),
               "--task", "digits", "--runs-dir", tmp, "--deadline", "600", "--json", *extra]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ})
        peak, peak_procs = 0, 0
        while proc.poll() is None:
            pids = _tree(proc.pid)
            total = sum(_pss_kib(p) for p in pids)
            if total > peak:
                peak, peak_procs = total, len(pids)
            time.sleep(0.5)
        wall = time.monotonic() - started
        out = proc.stdout.read().decode() if proc.stdout else ""
        summary = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    return {"clients": clients, "rounds": rounds, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "peak_pss_gib": round(peak / 2**20, 2), "processes_at_peak": peak_procs,
            "rounds_completed": summary.get("rounds_completed"), "accepted_updates": summary.get("accepted_updates"),
            "final_accuracy": summary.get("final_accuracy"), "args": extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clients", nargs="+", type=int)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--devices-per-process", type=int, default=None)
    a = ap.parse_args()
    extra = ["--devices-per-process", str(a.devices_per_process)] if a.devices_per_process else []
    for n in a.clients:
        print(json.dumps(run(n, a.rounds, extra)), flush=True)


if __name__ == "__main__":
    main()
