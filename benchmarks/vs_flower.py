"""QFLARE side by side with Flower 1.42 on the same workload (issue 12, "Side by side with Flower").

    .venv/bin/python benchmarks/vs_flower.py --setup-flower          # once: Flower's own venv (see below)
    .venv/bin/python benchmarks/vs_flower.py                         # 10 clients x 20 rounds
    .venv/bin/python benchmarks/vs_flower.py --clients 10 50 100 --rounds 20 --repeat 1

The workload, the same on both sides:

* the digits task's CNN (``qflare.fl.tasks.digits``), initial weights ``build_model(seed=0)`` on both;
* ONE Dirichlet(alpha) split, computed here once with ``qflare.fl.data.partition.dirichlet_partition``
  (per-client minimum ``default_min_size``, fair-share cap) and written to ``split-N.json``; the Flower
  clients read their indices from that file; QFLARE's edges derive theirs with the same function and
  arguments (``DataConfig`` has no index-file option), and this script checks, client by client, that
  ``DigitsTask.client_dataset`` (what an edge loads) holds exactly the file's samples before it runs;
* the same local training: ``qflare.fl.train.train_local`` with the task's defaults (SGD, lr 0.05,
  momentum 0.9, batch 32, 5 epochs) on both sides; ``qflare simulate`` has no ``--momentum`` flag, so the
  QFLARE side is driven through ``SimulationConfig(train=...)`` with the same ``TrainConfig``;
* every client every round, R rounds, plain FedAvg weighted by the number of examples (QFLARE
  ``aggregator="fedavg"``; Flower ``flwr.serverapp.strategy.FedAvg``), the global model evaluated on
  the same held-out test set (``DigitsTask.test_dataset``) after every round, no client-side evaluation.

Systems:

* ``flower-ray``: Flower's simulation engine (``flwr.simulation.run_simulation``), the only backend
  Flower 1.42 has (``vce_api.start_vce`` always builds a ``RayBackend``; Ray 2.55 refuses
  ``local_mode``): so there is no Flower in-process/thread run to measure. Ray gets the 2 cores
  (``num_cpus 2``), each ClientApp 1 (two clients train at a time, as QFLARE's two edge processes do).
* ``qflare``: ``qflare simulate``'s runner over real HTTP: server, simulated enclave (on, the default),
  audit ledger, post-quantum envelopes on every request, long-poll on the task route (10 s, the default),
  2 edge processes hosting the virtual devices.

Each system runs as its own process tree started from this script; wall time is that tree's whole life
(interpreter start, imports, Ray start-up or server, enclave and edge start-up, shutdown); peak memory is
the largest sum, over the tree (the worker and every descendant: Ray's GCS, raylet and workers; QFLARE's
server, enclave and edge processes), of PSS (``/proc/PID/smaps_rollup``) and of RSS, sampled every 0.25 s.
A round is, for Flower, from the end of the previous round's server-side evaluation to the start of this
round's (send, train, receive, aggregate); for QFLARE, its ``round_seconds`` (opened to closed).

Flower 1.42 cannot be installed into QFLARE's venv: it pins fastapi 0.138, uvicorn 0.49, typer < 0.21,
rich < 15 and packaging < 26, QFLARE pins fastapi 0.165, uvicorn 0.54, typer 0.29, rich 15, packaging 26
(pip: ResolutionImpossible). ``--setup-flower`` makes a separate venv with ``flwr[simulation]==1.42.0``
(``benchmarks/requirements-flower.txt``) whose own packages come first and QFLARE's venv (torch, numpy,
qflare) after them, through a ``.pth`` file. Writes ``benchmarks/results/vs_flower.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_FLOWER_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qflare" / "flower-venv"
TASK = "digits"


# --------------------------------------------------------------------------------------------------
# The split: computed once, handed to both
# --------------------------------------------------------------------------------------------------


def make_split(clients: int, alpha: float, seed: int, path: Path) -> dict[str, Any]:
    """Compute the Dirichlet split once, write it to ``path``, and check QFLARE's edges load exactly it."""
    import numpy as np

    from qflare.fl.data.digits import digits_split
    from qflare.fl.data.partition import dirichlet_partition
    from qflare.fl.tasks import get_task

    task = get_task(TASK)
    data = digits_split(seed, task.test_fraction)  # type: ignore[attr-defined]
    parts = dirichlet_partition(data.y_train, clients, alpha, seed,
                                min_size=task.min_partition_size)  # type: ignore[attr-defined]
    for i, idx in enumerate(parts):  # what edge i loads (DataConfig partition_index=i): the same samples
        x, y = task.client_dataset(i, clients, partition="dirichlet", alpha=alpha, seed=seed).tensors
        if not (np.array_equal(x.numpy(), data.x_train[idx]) and np.array_equal(y.numpy(), data.y_train[idx])):
            raise SystemExit(f"client {i}: QFLARE's edge would not load the split's samples")
    doc = {"task": TASK, "clients": clients, "alpha": alpha, "seed": seed,
           "indices": [[int(v) for v in idx] for idx in parts]}
    text = json.dumps(doc)
    path.write_text(text)
    sizes = [len(p) for p in parts]
    return {"file": path.name, "sha256": hashlib.sha256(text.encode()).hexdigest(), "sizes_min": min(sizes),
            "sizes_max": max(sizes), "sizes_median": statistics.median(sizes),
            "samples": sum(sizes)}


def _train_config() -> Any:
    from qflare.fl.tasks import get_task

    return get_task(TASK).default_train_config()


# --------------------------------------------------------------------------------------------------
# Flower side (runs in Flower's venv: python vs_flower.py --worker flower ...)
# --------------------------------------------------------------------------------------------------


def _flower_client_train(msg: Any, context: Any) -> Any:
    """The ClientApp's train function: the partition's samples, ``train_local`` with the server's config."""
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from torch.utils.data import TensorDataset

    from qflare.fl.data.digits import digits_split
    from qflare.fl.simulation import client_seed
    from qflare.fl.tasks import get_task
    from qflare.fl.train import train_local

    torch.set_num_threads(1)
    cfg = msg.content["config"]
    split = json.loads(Path(str(cfg["split-file"])).read_text())
    pid = int(context.node_config["partition-id"])
    task = get_task(TASK)
    data = digits_split(int(split["seed"]), task.test_fraction)  # type: ignore[attr-defined]
    idx = np.asarray(split["indices"][pid], dtype=np.int64)
    dataset = TensorDataset(torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx]))
    model = task.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    result = train_local(model, dataset, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch-size"]),
                         lr=float(cfg["lr"]), optimizer=str(cfg["optimizer"]),  # type: ignore[arg-type]
                         momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight-decay"]),
                         seed=client_seed(int(split["seed"]), int(cfg["server-round"]), pid))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": float(result.mean_loss),
                                                   "num-examples": int(result.num_examples)})})
    return Message(content=content, reply_to=msg)


def flower_worker(split_file: Path, rounds: int, out: Path) -> None:
    import logging

    import torch
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from qflare.fl.tasks import get_task

    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    split = json.loads(split_file.read_text())
    clients = int(split["clients"])
    task = get_task(TASK)
    test = task.test_dataset(int(split["seed"]))
    tc = _train_config()
    marks: list[tuple[str, int, float]] = []
    accuracy: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        marks.append(("eval_start", server_round, time.perf_counter()))
        model = task.build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = task.evaluate(model, test)
        accuracy[server_round] = float(metrics["accuracy"])
        marks.append(("eval_end", server_round, time.perf_counter()))
        return MetricRecord({"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])})

    client_app = ClientApp()
    client_app.train()(_flower_client_train)
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Any) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_evaluate_nodes=0, min_available_nodes=clients)
        config = ConfigRecord({"split-file": str(split_file.resolve()), "epochs": tc.epochs,
                               "batch-size": tc.batch_size, "lr": tc.lr, "optimizer": tc.optimizer,
                               "momentum": tc.momentum, "weight-decay": tc.weight_decay})
        strategy.start(grid=grid, initial_arrays=ArrayRecord(task.build_model().state_dict()), num_rounds=rounds,
                       train_config=config, evaluate_fn=evaluate)

    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                   backend_config={"init_args": {"num_cpus": 2, "include_dashboard": False},
                                   "client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    inner = time.perf_counter() - t0
    ends = {r: t for k, r, t in marks if k == "eval_end"}
    starts = {r: t for k, r, t in marks if k == "eval_start"}
    round_s = [starts[r] - ends[r - 1] for r in range(1, rounds + 1) if r in starts and r - 1 in ends]
    import flwr
    import ray

    out.write_text(json.dumps({
        "rounds_completed": len(round_s), "round_seconds": round_s, "run_simulation_seconds": inner,
        "final_accuracy": accuracy.get(rounds), "accuracy_by_round": accuracy,
        "flwr": getattr(flwr, "__version__", "1.42.0"), "ray": ray.__version__,
        "train": tc.model_dump(mode="json"),
    }))


# --------------------------------------------------------------------------------------------------
# QFLARE side (runs in QFLARE's venv: python vs_flower.py --worker qflare ...)
# --------------------------------------------------------------------------------------------------


def qflare_worker(split_file: Path, rounds: int, out: Path, work: Path) -> None:
    import csv

    from qflare.sim.runner import SimulationConfig, run_simulation

    split = json.loads(split_file.read_text())
    tc = _train_config()
    sim = SimulationConfig(task=TASK, clients=int(split["clients"]), rounds=rounds, partition="dirichlet",
                           alpha=float(split["alpha"]), seed=int(split["seed"]), train=tc, aggregator="fedavg",
                           enclave="simulated", long_poll_seconds=10.0, runs_dir=work)
    t0 = time.perf_counter()
    summary = run_simulation(sim)
    inner = time.perf_counter() - t0
    with (Path(summary["run_dir"]) / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    round_s = [float(r["round_seconds"]) for r in rows if r.get("round_seconds")]
    acc = {int(r["round_id"]): float(r["accuracy"]) for r in rows if r.get("accuracy") and r.get("round_id")}
    out.write_text(json.dumps({
        "rounds_completed": summary["rounds_completed"], "round_seconds": round_s, "run_simulation_seconds": inner,
        "final_accuracy": summary.get("final_accuracy"), "accuracy_by_round": acc,
        "accepted_updates": summary.get("accepted_updates"), "rejected_updates": summary.get("rejected_updates"),
        "enclave": summary.get("enclave"), "aggregator": "fedavg", "long_poll_seconds": 10.0,
        "train": tc.model_dump(mode="json"),
    }))


# --------------------------------------------------------------------------------------------------
# The driver: one process tree per system, its memory sampled
# --------------------------------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in bytes; (0, 0) if it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


class TreeSampler(threading.Thread):
    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_pss = self.peak_rss = self.peak_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _tree(self.root)
            pss = rss = 0
            for pid in pids:
                p, r = _rollup(pid)
                pss, rss = pss + p, rss + r
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(pids))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_system(system: str, python: str, split_file: Path, rounds: int, work: Path) -> dict[str, Any]:
    out = work / f"{system}-{split_file.stem}.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--split", str(split_file),
           "--rounds", str(rounds), "--out", str(out), "--work", str(work / f"{system}-runs")]
    # RAY_worker_niceness 0: Ray starts its workers (Flower's ClientApps) at nice +15 by default, so on a
    # busy machine Flower's training starved behind everything else while QFLARE's edges ran at the
    # script's niceness (2026-12-02: Flower's 10 x 20 took 320 s at load 17-27, 55-65 s before).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "RAY_worker_niceness": "0"}
    log = work / f"{system}-{split_file.stem}.log"
    t0 = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    if rc != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{system} failed (exit {rc}); log tail:\n{tail}")
    res = json.loads(out.read_text())
    rs = res.pop("round_seconds")
    res.update({
        "system": system, "wall_seconds": wall, "median_round_seconds": statistics.median(rs) if rs else None,
        "p90_round_seconds": sorted(rs)[min(len(rs) - 1, int(0.9 * len(rs)))] if rs else None,
        "round_seconds": rs, "peak_pss_bytes": sampler.peak_pss, "peak_rss_bytes": sampler.peak_rss,
        "peak_processes": sampler.peak_procs,
    })
    return res


def machine() -> dict[str, Any]:
    import platform

    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 2**30, 1), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def setup_flower(venv: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-r", str(HERE / "requirements-flower.txt")], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # QFLARE's venv: torch, numpy, qflare; after Flower's own packages
    (Path(site) / "zz_qflare_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    print(f"Flower venv ready: {py}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per system and client count (alternating)")
    ap.add_argument("--systems", nargs="+", default=["flower-ray", "qflare"], choices=["flower-ray", "qflare"])
    ap.add_argument("--flower-python", default=str(DEFAULT_FLOWER_VENV / "bin" / "python"))
    ap.add_argument("--setup-flower", action="store_true", help=f"create Flower's venv at {DEFAULT_FLOWER_VENV}")
    ap.add_argument("--out", type=Path, default=RESULTS / "vs_flower.json")
    ap.add_argument("--worker", choices=["flower-ray", "qflare"], help=argparse.SUPPRESS)
    ap.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setup_flower:
        setup_flower(DEFAULT_FLOWER_VENV)
        return
    if args.worker == "flower-ray":
        flower_worker(args.split, args.rounds, args.out)
        return
    if args.worker == "qflare":
        qflare_worker(args.split, args.rounds, args.out, args.work)
        return

    pythons = {"flower-ray": args.flower_python, "qflare": sys.executable}
    doc: dict[str, Any] = {"machine": machine(), "task": TASK, "alpha": args.alpha,
                           "seed": args.seed, "train": _train_config().model_dump(mode="json"), "cells": []}
    if args.out.exists():  # keep cells of other client counts from earlier runs
        old = json.loads(args.out.read_text())
        doc["cells"] = [c for c in old.get("cells", []) if c["clients"] not in args.clients
                        or c["rounds"] != args.rounds]
    with tempfile.TemporaryDirectory(prefix="qflare-vs-flower-") as tmp:
        work = Path(tmp)
        for n in args.clients:
            split_file = work / f"split-{n}.json"
            split = make_split(n, args.alpha, args.seed, split_file)
            runs: list[dict[str, Any]] = []
            for rep in range(args.repeat):
                for system in args.systems:
                    started, load = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getloadavg()[0]
                    res = run_system(system, pythons[system], split_file, args.rounds, work)
                    res.update({"clients": n, "repeat": rep, "started_utc": started, "loadavg_1min_at_start": load})
                    runs.append(res)
                    print(json.dumps({k: v for k, v in res.items() if k not in ("round_seconds", "accuracy_by_round")}),
                          flush=True)

            def mean(system: str, key: str, runs: list[dict[str, Any]] = runs) -> float | None:
                vals = [r[key] for r in runs if r["system"] == system and r.get(key) is not None]
                return statistics.fmean(vals) if vals else None

            ratios = {k: _ratio(mean("qflare", k), mean("flower-ray", k))
                      for k in ("wall_seconds", "median_round_seconds", "peak_pss_bytes", "peak_rss_bytes")}
            cell = {"clients": n, "rounds": args.rounds, "split": split, "runs": runs,
                    "ratios_qflare_over_flower_ray": ratios}
            fa, qa = mean("flower-ray", "final_accuracy"), mean("qflare", "final_accuracy")
            cell["accuracy_difference_points"] = (qa - fa) * 100 if fa is not None and qa is not None else None
            doc["cells"] = [c for c in doc["cells"] if not (c["clients"] == n and c["rounds"] == args.rounds)]
            doc["cells"].append(cell)
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print("| clients | system | accuracy | wall s | median round s | peak PSS GiB | peak RSS GiB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for cell in sorted(doc["cells"], key=lambda c: c["clients"]):
        for r in cell["runs"]:
            print(f"| {cell['clients']} | {r['system']} | {r['final_accuracy']:.4f} | {r['wall_seconds']:.1f} | "
                  f"{r['median_round_seconds']:.3f} | {r['peak_pss_bytes'] / 2**30:.2f} | "
                  f"{r['peak_rss_bytes'] / 2**30:.2f} |")
        print(f"ratios QFLARE / Flower-on-Ray at {cell['clients']}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in cell["ratios_qflare_over_flower_ray"].items() if v is not None)
              + (f"; accuracy difference {cell['accuracy_difference_points']:+.2f} points"
                 if cell["accuracy_difference_points"] is not None else ""))


if __name__ == "__main__":
    main()
