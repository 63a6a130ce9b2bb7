"""Ledger benchmark: batched appends, and proof generation + verification at 1,000,000 leaves.

Figures are ratios against a baseline measured in the same run on the same machine: the raw
``hashlib.sha256`` of the same leaf bytes (the cost of hashing alone, no tree and no store). The
proof timings are per proof (generate from the stored tiles, then verify), for random leaves and
random size pairs of a 1,000,000-leaf log on the in-memory store; the goal is under 5 ms each.

Entry points: :func:`run` (in memory and on a given store), :func:`run_sql` (``SqlLogStore`` on SQLite
and, given a URL, PostgreSQL), :func:`ledger_round_cost` (the audit log's own work for one round) and
:func:`simulate_cost` (``qflare simulate`` with and without the ledger). ``qflare bench ledger`` runs them.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

from qflare.ledger.log import TransparencyLog
from qflare.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from qflare.ledger.store import LogStore, MemoryLogStore

__all__ = ["ledger_round_cost", "run", "run_sql", "simulate_cost"]

_BATCH = 1000
_PROOF_TREE = 1_000_000


def _leaves(start: int, n: int) -> list[bytes]:
    # About the size of a real update_accepted entry with its producer signature (7,011 bytes).
    return [b"qflare-ledger-entry/v1\n" + i.to_bytes(8, "big") * 873 for i in range(start, start + n)]


def _baseline_hashes_per_second(seconds: float) -> float:
    batch = _leaves(0, _BATCH)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for e in batch:
            hashlib.sha256(e).digest()
        n += len(batch)
    return n / (time.perf_counter() - t0)


def _appends_per_second(store: LogStore, seconds: float) -> float:
    log = TransparencyLog(store, origin="bench/ledger")
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        log.append(_leaves(n, _BATCH))
        n += _BATCH
    return n / (time.perf_counter() - t0)


def run(
    seconds: float = 2.0,
    store: LogStore | None = None,
    *,
    proof_tree_size: int = _PROOF_TREE,
    print_report: bool = True,
) -> dict[str, Any]:
    """Measure and return the figures (and print them unless ``print_report`` is false).

    Parameters
    ----------
    seconds:
        Time budget of each throughput phase (baseline, memory appends, ``store`` appends) and of
        each proof phase. Building the 1,000,000-leaf tree comes on top (a few seconds).
    store:
        An optional extra (empty) :class:`LogStore` to measure appends through, e.g. the SQL store.
    proof_tree_size:
        Leaves in the proof tree (1,000,000 by default; smaller for a smoke test).
    """
    out: dict[str, Any] = {}
    base = _baseline_hashes_per_second(seconds)
    out["baseline_sha256_per_s"] = base
    mem = _appends_per_second(MemoryLogStore(), seconds)
    out["memory_appends_per_s"] = mem
    out["memory_appends_vs_baseline"] = mem / base
    if store is not None:
        other = _appends_per_second(store, seconds)
        out["store_appends_per_s"] = other
        out["store_appends_vs_baseline"] = other / base

    log = TransparencyLog(MemoryLogStore(), origin="bench/ledger")
    t0 = time.perf_counter()
    for start in range(0, proof_tree_size, 10_000):
        log.append(_leaves(start, min(10_000, proof_tree_size - start)))
    out["build_proof_tree_seconds"] = time.perf_counter() - t0
    root = log.root()
    rng = random.Random(1)

    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        i = rng.randrange(proof_tree_size)
        proof = log.inclusion_proof(i)
        verify_inclusion(leaf_hash(_leaves(i, 1)[0]), i, proof_tree_size, proof, root)
        n += 1
    out["inclusion_ms"] = 1000 * (time.perf_counter() - t0) / n

    n = 0
    roots: dict[int, bytes] = {}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s1 = rng.randrange(1, proof_tree_size)
        proof = log.consistency_proof(s1)
        r1 = roots.setdefault(s1, log.root(s1))
        verify_consistency(s1, proof_tree_size, proof, r1, root)
        n += 1
    out["consistency_ms"] = 1000 * (time.perf_counter() - t0) / n
    # One proof costs about as much as hashing this many leaves:
    out["inclusion_vs_baseline_leaf_hashes"] = out["inclusion_ms"] / 1000 * base
    out["consistency_vs_baseline_leaf_hashes"] = out["consistency_ms"] / 1000 * base

    if print_report:
        print(f"baseline sha256:           {base:12.0f} leaves/s")
        print(f"append (memory store):     {mem:12.0f} leaves/s  ({mem / base:.2f} x baseline)")
        if store is not None:
            print(f"append (given store):      {out['store_appends_per_s']:12.0f} leaves/s")
        print(f"build {proof_tree_size}-leaf log: {out['build_proof_tree_seconds']:9.2f} s")
        print(f"inclusion gen+verify:      {out['inclusion_ms']:12.3f} ms (goal < 5 ms)")
        print(f"consistency gen+verify:    {out['consistency_ms']:12.3f} ms (goal < 5 ms)")
    return out


def run_sql(seconds: float, work_dir: Path, postgres_url: str | None = None) -> dict[str, Any]:
    """Appends/s in batches of 1,000 through ``SqlLogStore`` on a fresh SQLite file (and PostgreSQL)."""
    from qflare.server.storage.ledger_store import SqlLogStore

    out: dict[str, Any] = {"batch": _BATCH}
    store = SqlLogStore(f"sqlite:///{(work_dir / 'bench-ledger.db').resolve()}")
    try:
        out["sqlite_appends_per_s"] = _appends_per_second(store, seconds)
    finally:
        store.close()
    if postgres_url is not None:
        pg = SqlLogStore(postgres_url)
        try:
            if pg.size() != 0:
                raise ValueError("the PostgreSQL database must hold no ledger (use an empty schema)")
            out["postgres_appends_per_s"] = _appends_per_second(pg, seconds)
        finally:
            pg.close()
    return out


def ledger_round_cost(work_dir: Path, *, clients: int, rounds: int = 20) -> dict[str, Any]:
    """The audit log's own time for one round of ``clients`` updates, on SQLite, as the server does it:
    ``round_opened``, one ``update_accepted`` per client (one transaction each), ``round_closed`` +
    ``aggregate_published`` and a signed checkpoint."""
    from qflare.crypto import SigningKey
    from qflare.server.ledger import AuditLog
    from qflare.server.storage.ledger_store import SqlLogStore

    store = SqlLogStore(f"sqlite:///{(work_dir / 'bench-round.db').resolve()}")
    audit = AuditLog(store, SigningKey.generate(), clock=time.time)
    h = "ab" * 32
    t0 = time.perf_counter()
    for r in range(rounds):
        audit.round_opened(r, h, "fedavg", time.time() + 60)
        for c in range(clients):
            audit.update_accepted(f"edge_{c:02d}", r, hashlib.sha256(b"%d/%d" % (r, c)).hexdigest(), 600, 1.25)
        audit.round_closed(r, h, "fedavg", [(f"edge_{c:02d}", 600) for c in range(clients)])
    per_round = (time.perf_counter() - t0) / rounds
    store.close()
    return {"clients": clients, "ledger_ms_per_round": 1000 * per_round}


def _mean_round_seconds(run_dir: Path) -> float:
    import csv

    with (run_dir / "metrics.csv").open() as f:
        values = [float(r["round_seconds"]) for r in csv.DictReader(f) if r.get("round_seconds")]
    return sum(values) / len(values)


def simulate_cost(work_dir: Path, *, clients: int = 3, rounds: int = 3, enclave: str = "none") -> dict[str, Any]:
    """Mean round time of a short ``qflare simulate`` run with the ledger and without (``ledger.enabled``),
    and the ratio. With the ledger the devices also audit it (a checkpoint GET per poll, proofs)."""
    from qflare.sim.runner import SimulationConfig, run_simulation

    out: dict[str, Any] = {"clients": clients, "rounds": rounds, "enclave": enclave}
    for label, enabled in (("without", False), ("with", True)):
        summary = run_simulation(SimulationConfig(task="digits", clients=clients, rounds=rounds, partition="iid",
                                                  enclave=enclave, ledger=enabled,
                                                  runs_dir=work_dir / f"sim-{label}"))
        out[f"round_seconds_{label}_ledger"] = _mean_round_seconds(Path(summary["run_dir"]))
    out["round_time_ratio"] = out["round_seconds_with_ledger"] / out["round_seconds_without_ledger"]
    return out


if __name__ == "__main__":  # pragma: no cover
    run()
