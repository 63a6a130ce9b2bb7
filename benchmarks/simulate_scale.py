"""Wall time and peak memory of ``qflare simulate`` at several client counts (docs/benchmarks.md).

Peak memory is of the whole process tree (server, enclave, edge processes; with ``--backend ray`` also Ray's
GCS, raylet and worker processes, which the local cluster starts as descendants of ``qflare simulate``): the
sum over the tree of each process's PSS (proportional set size, so shared library pages count once), sampled
every 0.5 s; ``peak_by_process`` splits the peak by process name.

    .venv/bin/python benchmarks/simulate_scale.py 10 50 100 200 --rounds 2 [--devices-per-process 1]
    .venv/bin/python benchmarks/simulate_scale.py 1000 --rounds 2 --backend ray
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


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def run(clients: int, rounds: int, extra: list[str], *, deadline: float = 600.0, keep: Path | None = None
        ) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = keep or Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)  # --keep-runs DIR need not exist yet
        cmd = [sys.executable, "-m", "qflare", "simulate", "--clients", str(clients), "--rounds", str(rounds),
               "--task", "digits", "--runs-dir", str(runs), "--deadline", str(deadline), "--json", *extra]
        started = time.monotonic()
        err = open(runs / f"simulate-{clients}.stderr", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env={**os.environ})
        peak, peak_procs, by_name = 0, 0, {}
        cpu: dict[int, tuple[str, float]] = {}  # the last CPU time seen of every process of the tree
        while proc.poll() is None:
            pids = _tree(proc.pid)
            for p in pids:
                cpu[p] = (_name(p), _cpu_seconds(p))
            pss = {p: _pss_kib(p) for p in pids}
            total = sum(pss.values())
            if total > peak:
                peak, peak_procs = total, len(pids)
                by_name = {}
                for p, kib in pss.items():
                    by_name[_name(p)] = by_name.get(_name(p), 0) + kib
            time.sleep(0.5)
        wall = time.monotonic() - started
        err.close()
        tail = [ln for ln in (runs / f"simulate-{clients}.stderr").read_text(errors="replace").splitlines()
                if ln.strip()][-1:]
        cpu_by_name: dict[str, float] = {}
        for name, secs in cpu.values():
            cpu_by_name[name] = cpu_by_name.get(name, 0.0) + secs
        out = proc.stdout.read().decode() if proc.stdout else ""
        summary = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        round_rows = []
        if summary.get("run_dir") and (Path(summary["run_dir"]) / "metrics.csv").exists():
            import csv

            with (Path(summary["run_dir"]) / "metrics.csv").open() as f:
                round_rows = [{"round": int(r["round_id"]), "close_reason": r["close_reason"],
                           "updates": int(r["num_updates"] or 0), "seconds": round(float(r["round_seconds"]), 1)}
                          for r in csv.DictReader(f) if r.get("round_seconds")]
    return {"clients": clients, "rounds": rounds, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "peak_pss_gib": round(peak / 2**20, 2), "processes_at_peak": peak_procs,
            "peak_by_process_mib": {k: round(v / 1024) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])},
            "rounds_completed": summary.get("rounds_completed"), "accepted_updates": summary.get("accepted_updates"),
            "rejected_updates": summary.get("rejected_updates"), "rounds_detail": round_rows,
            "final_accuracy": summary.get("final_accuracy"),
            "inner_wall_s": summary.get("wall_seconds"), "run_dir": summary.get("run_dir") if keep else None,
            "cpu_seconds_by_process": {k: round(v, 1) for k, v in sorted(cpu_by_name.items(), key=lambda kv: -kv[1])},
            "loadavg_1min_at_end": os.getloadavg()[0], "error": None if proc.returncode == 0 else tail, "args": extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clients", nargs="+", type=int)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--devices-per-process", type=int, default=None)
    ap.add_argument("--backend", choices=["process", "ray"], default="process")
    ap.add_argument("--deadline", type=float, default=600.0, help="round deadline (s)")
    ap.add_argument("--keep-runs", type=Path, default=None, help="keep runs/<timestamp>/ here (default: deleted)")
    a = ap.parse_args()
    extra = ["--devices-per-process", str(a.devices_per_process)] if a.devices_per_process else []
    if a.backend != "process":
        extra += ["--backend", a.backend]
    for n in a.clients:
        print(json.dumps(run(n, a.rounds, extra, deadline=a.deadline, keep=a.keep_runs)), flush=True)


if __name__ == "__main__":
    main()
