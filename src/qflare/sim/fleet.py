"""Many virtual edge devices in one process: what ``qflare simulate`` runs instead of one process per device.

Each device is the same :class:`~qflare.edge.node.EdgeNode` that ``qflare edge`` runs, in its own thread,
with its own ``device_config.yaml``: its own identity key, KEM encapsulations and one-time envelopes, HTTP
client, data shard and model. What the devices of one process share is only what a real device also
has for itself and never sends: the Python interpreter and the torch library (loaded once, which is what
makes a few hundred devices fit one machine). ``train_slots`` bounds how many train at the same moment,
so that memory holds one training's activations per slot, not per device.

Run as ``python -m qflare.sim.fleet [--train-slots N] CONFIG.yaml ...``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qflare.sim.profiles import SimulatedDevice

__all__ = ["LOG_FORMAT", "log_per_device", "prepare_node", "run_fleet"]

log = logging.getLogger("qflare.sim.fleet")


def _run_one(path: Path, gate: FairGate, max_rounds: int | None, results: dict[str, str]) -> None:
    from qflare.config import load_device_config
    from qflare.edge.audit import build_auditor
    from qflare.edge.node import EdgeNode, he_context_for, privacy_state_file
    from qflare.edge.setup import build_client, connect
    from qflare.sim.realistic import simulated_device_for, write_device_report

    cfg = load_device_config(path)
    try:
        with connect(lambda: build_client(cfg, path.parent), cfg) as client:
            node = EdgeNode(cfg, client, auditor=build_auditor(cfg, path.parent, client.http),
                            privacy_state=privacy_state_file(cfg, path.parent),
                            he_context=he_context_for(cfg, path.parent))
            simulated = simulated_device_for(cfg.device_id, seed=cfg.data.seed)  # --device-profiles only
            report = path.parent / f"{cfg.device_id}.sim.json"
            prepare_node(node, gate, dp_report=path.parent / f"{cfg.device_id}.dp.json", simulated=simulated,
                         sim_report=report)
            try:
                stats = node.run(max_rounds=max_rounds)
            finally:
                if simulated is not None:
                    write_device_report(simulated, report)
        results[cfg.device_id] = "ok"
        log.info("%s finished: %s", cfg.device_id, stats.summary())
    except Exception as exc:  # noqa: BLE001 - one device's failure is reported, the others go on
        results[cfg.device_id] = f"{type(exc).__name__}: {exc}"
        log.exception("%s failed", cfg.device_id)


def prepare_node(node: Any, gate: FairGate, *, dp_report: Path, simulated: SimulatedDevice | None = None,
                 sim_report: Path | None = None, **simulation: Any) -> None:
    """Wrap a hosted device's ``train_round``: one of the process's training slots (``gate``) while it trains,
    the local-DP report after it, and (``--device-profiles``) the device's simulated behaviour
    (:func:`qflare.sim.realistic.attach_simulation`, with ``simulation`` passed on)."""
    from qflare.sim.realistic import attach_simulation, write_device_report

    node.train_round = _reporting_dp(node, dp_report)
    if simulated is None:
        node.train_round = _gated(node.train_round, gate)
        return
    device = simulated

    def on_task() -> None:
        if sim_report is not None:
            write_device_report(device, sim_report)

    # The simulation takes the slot itself: its slowdown multiplies the time spent in the slot, not the wait
    # for it (a slow device behind 24 others of its process slept 9 x that wait), and it sleeps outside it.
    attach_simulation(node, device, slot=gate, on_task=on_task, **simulation)


class FairGate:
    """A semaphore that admits waiters in arrival order (``threading.Semaphore`` does not: in async rounds,
    where a device may train again at once, the device that just released a slot re-took it and the
    others of its process never trained)."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._free = max(1, slots)
        self._queue: collections.deque[object] = collections.deque()

    def __enter__(self) -> None:
        me = object()
        with self._cond:
            self._queue.append(me)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] is me)
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


def _gated(fn: Callable[[dict[str, Any]], bytes | None], gate: FairGate
           ) -> Callable[[dict[str, Any]], bytes | None]:
    def train(task: dict[str, Any]) -> bytes | None:
        with gate:
            return fn(task)

    return train


def _reporting_dp(node: Any, report: Path) -> Callable[[dict[str, Any]], bytes | None]:
    """``node.train_round``, then (with local DP) the device's privacy spent written to ``report``: the
    run summary reads it (the driver may stop this process before the node returns)."""
    import json

    fn: Callable[[dict[str, Any]], bytes | None] = node.train_round

    def train(task: dict[str, Any]) -> bytes | None:
        update = fn(task)
        if node.local_dp is not None:
            tmp = report.with_suffix(".tmp")
            tmp.write_text(json.dumps({"device_id": node.config.device_id, **node.local_dp.report()}))
            tmp.replace(report)
        return update

    return train


class _DeviceLogRouter(logging.Handler):
    """Writes each record to its device's file, found by its thread's name: the device's own thread, and the
    helper threads it starts (named ``"<its name>-..."``, e.g. its audit). One dictionary lookup a record,
    where one handler per device with a filter each cost O(devices) a record (500 filters per line in a
    500-device Ray actor)."""

    def __init__(self, files: dict[str, logging.Handler]) -> None:
        super().__init__()
        self._files = files

    def _target(self, thread_name: str) -> logging.Handler | None:
        name = thread_name
        while True:
            handler = self._files.get(name)
            if handler is not None:
                return handler
            cut = name.rfind("-")
            if cut <= 0:
                return None
            name = name[:cut]

    def handle(self, record: logging.LogRecord) -> bool:
        target = self._target(record.threadName or "")
        if target is None:
            return False
        return bool(target.handle(record))

    def emit(self, record: logging.LogRecord) -> None:  # handle() routes; nothing is emitted here
        pass

    def close(self) -> None:
        for handler in self._files.values():
            handler.close()
        super().close()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_per_device(configs: Sequence[Path], log_dir: Path) -> list[logging.Handler]:
    """One ``<log_dir>/<device_id>.log`` per device (its thread is named after its config file); returns the
    handlers added to the root logger."""
    files: dict[str, logging.Handler] = {}
    for path in configs:
        handler = logging.FileHandler(Path(log_dir) / f"{Path(path).stem}.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        files[Path(path).stem] = handler
    router = _DeviceLogRouter(files)
    logging.getLogger().addHandler(router)
    return [router]


def run_fleet(configs: Sequence[Path], *, train_slots: int = 1, max_rounds: int | None = None) -> dict[str, str]:
    """Run one device per config until each is done; returns ``device_id -> "ok"`` or the failure."""
    import torch

    torch.set_num_threads(1)  # one core per training slot: the slots, not torch, use the cores
    gate = FairGate(train_slots)
    results: dict[str, str] = {}
    threads = [threading.Thread(target=_run_one, args=(Path(p), gate, max_rounds, results), name=Path(p).stem,
                                daemon=True) for p in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qflare.sim.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="device_config.yaml files, one per device")
    parser.add_argument("--train-slots", type=int, default=1, help="devices training at the same time")
    parser.add_argument("--max-rounds", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-dir", type=Path, default=None, help="also one <device_id>.log per device here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(threadName)s " + LOG_FORMAT[12:])
    if args.log_dir is not None:
        log_per_device(args.configs, args.log_dir)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = run_fleet(args.configs, train_slots=args.train_slots, max_rounds=args.max_rounds)
    failed = {d: r for d, r in results.items() if r != "ok"}
    for d, r in sorted(failed.items()):
        print(f"{d}: {r}", file=sys.stderr)
    return 1 if failed or len(results) < len(args.configs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
