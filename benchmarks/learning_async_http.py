"""Issue 15's straggler figure over real HTTP: digits, 50 devices, sync vs async wall time to 0.93.

    nice -n 5 .venv/bin/python benchmarks/learning_async_http.py --runs-dir /tmp/async-runs   # ~8 min

Runs ``qflare simulate`` twice with the same seed, device profiles and local training, once with sync
rounds and once with ``--mode async`` (FedBuff over HTTP): a real server with the simulated enclave, the
audit ledger, one-time keys, the devices as virtual devices in two edge processes, on this machine's wall
clock. 30 % of the devices are 10x slower (``--slow-fraction 0.3 --slowdown 10``) and every device abandons
20 % of its tasks at random (``--dropout 0.2``, half mid-training, half mid-upload). Time to the target is
the run summary's ``time_to_target_seconds``: from the first round's opening to the close of the first
round (sync) or published version (async) whose global model reaches it on the held-out test set; it
leaves out the start-up (enrolment, enclave launch), which is the same for both.

Writes ``benchmarks/results/learning_async_http.json`` (both commands, both summaries, the accuracy curves
on the wall clock, the per-device simulated behaviour) and prints the table of docs/learning.md.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def simulate_args(args: argparse.Namespace, mode: str) -> list[str]:
    """The ``qflare simulate`` options of one mode: everything but the mode's own options is shared."""
    shared = ["--task", "digits", "--clients", str(args.clients), "--seed", str(args.seed),
              "--slow-fraction", str(args.slow_fraction), "--slowdown", str(args.slowdown),
              "--dropout", str(args.dropout), "--batch-size", str(args.batch_size),
              "--deadline", str(args.deadline), "--target-accuracy", str(args.target),
              "--runs-dir", str(Path(args.runs_dir) / mode), "--json"]
    if mode == "sync":
        return [*shared, "--rounds", str(args.sync_rounds)]
    return [*shared, "--mode", "async", "--rounds", str(args.async_versions), "--buffer", str(args.buffer),
            "--max-staleness", str(args.max_staleness)]


def curve(run_dir: Path) -> list[dict[str, Any]]:
    """Every round (version) with its close time on the wall clock, from the first round's opening."""
    with sqlite3.connect(run_dir / "qflare.db") as db:
        rows = db.execute("SELECT round_id, status, opened_at, closed_at, close_reason, metrics FROM rounds "
                          "ORDER BY round_id").fetchall()
        last = dict(db.execute("SELECT round_id, MAX(ts) FROM events WHERE kind = 'update_accepted' "
                               "GROUP BY round_id").fetchall())
    if not rows:
        return []
    start = min(r[2] for r in rows)
    out = []
    for round_id, status, opened, closed, reason, metrics in rows:
        m = json.loads(metrics or "{}")
        out.append({"round": round_id, "status": status, "close_reason": reason,
                    "closed_seconds": round(closed - start, 2) if closed is not None else None,
                    "updates": m.get("num_updates"), "accuracy": m.get("accuracy"),
                    "staleness_mean": m.get("staleness_mean"),
                    # how long after the opening the round's last accepted update came (what a deadline must allow)
                    "last_update_after_open_seconds": round(last[round_id] - opened, 2) if round_id in last else None})
    return out


def refusals(run_dir: Path) -> dict[str, int]:
    """Refused updates by reason (the simulated drop-outs are counted here too)."""
    with sqlite3.connect(run_dir / "qflare.db") as db:
        rows = db.execute("SELECT kind, reason, COUNT(*) FROM events WHERE kind LIKE '%reject%' "
                          "GROUP BY kind, reason").fetchall()
    return {f"{kind}:{reason}": n for kind, reason, n in rows}


def devices(summary: dict[str, Any]) -> dict[str, Any]:
    """The simulated behaviour, summed over the devices (slow ones apart)."""
    rows = summary.get("devices") or []
    slow = [d for d in rows if d.get("slowdown", 1) > 1]
    per_task = [d["simulated_delay_seconds"] / d["tasks"] for d in slow if d.get("tasks")]
    return {
        "devices": len(rows), "slow_devices": len(slow),
        "tasks": sum(d.get("tasks", 0) for d in rows),
        "completed": sum(d.get("completed", 0) for d in rows),
        "dropped_training": sum(d.get("dropped_training", 0) for d in rows),
        "dropped_upload": sum(d.get("dropped_upload", 0) for d in rows),
        # what a slow device slept per task: its slowdown x its time in the slot, plus any drop-out's absence
        "slow_device_simulated_seconds_per_task_median": round(statistics.median(per_task), 3) if per_task else None,
    }


def device_train_seconds(run_dir: Path) -> float | None:
    """The devices' median time of local training per task (their cost lines), on this machine."""
    import re

    pat = re.compile(r": round (\d+) costs (\{.*\})\s*$")
    vals = []
    for log in sorted((run_dir / "logs").glob("edge_*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = pat.search(line)
            if m:
                vals.append(float(json.loads(m.group(2)).get("train_seconds", "nan")))
    return round(statistics.median(vals), 4) if vals else None


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "qflare", "simulate", *simulate_args(args, mode)]
    shown = "qflare simulate " + " ".join(cmd[4:])
    print(f"{mode}: {shown}", flush=True)
    (Path(args.runs_dir) / mode).mkdir(parents=True, exist_ok=True)
    tic = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    host = time.monotonic() - tic
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{mode}: qflare simulate failed (exit {proc.returncode})")
    summary = json.loads(lines[-1])
    run_dir = Path(summary["run_dir"])
    rounds = curve(run_dir)
    accs = [r["accuracy"] for r in rounds if r["status"] == "aggregated" and r["accuracy"] is not None]
    result = {
        "command": shown,
        "time_to_target_seconds": summary.get("time_to_target_seconds"),
        "final_accuracy": summary.get("final_accuracy"),
        "last3_mean_accuracy": round(sum(accs[-3:]) / len(accs[-3:]), 4) if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "rounds_completed": summary.get("rounds_completed"),
        "rounds_failed": summary.get("rounds_failed"),
        "accepted_updates": summary.get("accepted_updates"),
        "rejected_updates": summary.get("rejected_updates"),
        "last_close_seconds": rounds[-1]["closed_seconds"] if rounds else None,
        "wall_seconds": summary.get("wall_seconds"),
        "host_seconds": round(host, 1),
        "device_train_seconds_median": device_train_seconds(run_dir),
        "simulated_devices": devices(summary),
        "refused": refusals(run_dir),
        "curve": rounds,
        "run_dir": str(run_dir),
    }
    print(f"{mode}: time to {args.target} {result['time_to_target_seconds']} s, final accuracy "
          f"{result['final_accuracy']}, {result['rounds_completed']} rounds, {result['accepted_updates']} updates, "
          f"{result['wall_seconds']} s wall", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-fraction", type=float, default=0.3)
    p.add_argument("--slowdown", type=float, default=10.0)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--target", type=float, default=0.93)
    p.add_argument("--batch-size", type=int, default=8,
                   help="local batch (default 8: a device holds ~29 images; the task's 32 is one step an epoch)")
    p.add_argument("--deadline", type=float, default=10.0,
                   help="round (and buffer) deadline, seconds (default 10: 1.5 x the ~6.5 s the last device that does "
                   "not drop out needs after a round opens, measured in a --deadline 15 run)")
    p.add_argument("--sync-rounds", type=int, default=24)
    p.add_argument("--async-versions", type=int, default=48,
                   help="default 48 x --buffer 20: about the updates 24 sync rounds accept (~41 a round)")
    p.add_argument("--buffer", type=int, default=20)
    p.add_argument("--max-staleness", type=int, default=10)
    p.add_argument("--modes", default="sync,async", help="comma list; the ratio needs both")
    p.add_argument("--runs-dir", default="runs/learning_async_http")
    p.add_argument("--out", type=Path, default=RESULTS / "learning_async_http.json")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
                           "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out["settings"]["machine"] = "this machine, shared 2-core, other runs beside"
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        out[mode] = run_mode(args, mode)
    if "sync" in out and "async" in out:
        s, a = out["sync"], out["async"]
        ratio = (a["time_to_target_seconds"] / s["time_to_target_seconds"]
                 if a["time_to_target_seconds"] and s["time_to_target_seconds"] else None)
        gap = (abs(a["final_accuracy"] - s["final_accuracy"])
               if a["final_accuracy"] is not None and s["final_accuracy"] is not None else None)
        out["ratio_async_over_sync"] = round(ratio, 3) if ratio is not None else None
        out["final_accuracy_gap_points"] = round(100 * gap, 2) if gap is not None else None
        out["goal"] = {"time_at_most_half": ratio is not None and ratio <= 0.5,
                       "final_within_1_point": gap is not None and gap <= 0.01}
        print(f"\n| mode | time to {args.target:.2f} (wall s) | final accuracy | rounds / versions | updates |")
        print("|---|---|---|---|---|")
        for mode in ("sync", "async"):
            r = out[mode]
            print(f"| {mode} | {r['time_to_target_seconds']} | {r['final_accuracy']:.3f} | {r['rounds_completed']} | "
                  f"{r['accepted_updates']} |")
        print(f"\nasync / sync time to target: {out['ratio_async_over_sync']}; final accuracy gap "
              f"{out['final_accuracy_gap_points']} points; goal {out['goal']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
