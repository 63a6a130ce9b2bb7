"""Every benchmark in one run (``qflare bench``): each module's figures under its name, plus the machine.

Budgets: ``full`` uses each benchmark's defaults; ``quick`` is small enough for a laptop minute (the
figures are noisier). Each entry is ``name -> callable(quick) -> figures``; the order is the table's.
"""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _auth(quick: bool) -> dict[str, Any]:
    from qflare.bench.auth import run
    from qflare.crypto.keyfile import UnencryptedKeyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        return run(requests=400, clients=8) if quick else run()


def _aggregate(quick: bool) -> dict[str, Any]:
    from qflare.bench.aggregate import run

    if quick:
        return run(clients=20, params=250_000, repeat=1, rules=False, production=True, production_clients=4,
                   production_params=250_000)
    return run(production=True)


def _qkd(quick: bool) -> dict[str, Any]:
    from qflare.bench.qkd import run

    return run(1_000_000, 0.5) if quick else run()


def _ingest(quick: bool) -> dict[str, Any]:
    from qflare.bench.ingest import run
    from qflare.crypto.keyfile import UnencryptedKeyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        return run(uploads=16, clients=4) if quick else run()


def _round(quick: bool) -> dict[str, Any]:
    from qflare.bench.rounds import run

    return run(clients=5, rounds=1) if quick else run()


def _enclave(quick: bool) -> dict[str, Any]:
    from qflare.bench.enclave import run

    return run(updates=6, params=250_000, repeats=2) if quick else run()


def _ledger(quick: bool) -> dict[str, Any]:
    from qflare.bench.ledger import run, run_sql

    seconds = 0.5 if quick else 2.0
    with tempfile.TemporaryDirectory(prefix="qflare-bench-ledger-") as tmp:
        return {"memory_and_proofs": run(seconds, proof_tree_size=10_000 if quick else 1_000_000,
                                         print_report=False),
                "sql": run_sql(seconds, Path(tmp))}


BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "auth": _auth, "ingest": _ingest, "aggregate": _aggregate, "round": _round, "qkd": _qkd, "enclave": _enclave,
    "ledger": _ledger,
}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def run_all(*, quick: bool = False, only: list[str] | None = None,
            on_start: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
    """Run the benchmarks (all, or ``only``); ``on_start(name)`` before each (the progress bar)."""
    figures: dict[str, Any] = {"machine": machine(), "budget": "quick" if quick else "full"}
    for name, fn in BENCHMARKS.items():
        if only and name not in only:
            continue
        on_start(name)
        figures[name] = fn(quick)
    return figures
