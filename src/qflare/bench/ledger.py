"""Ledger benchmark: batched appends, and proof generation + verification at 1,000,000 leaves.

Figures are ratios against a baseline measured in the same run on the same machine: the raw
``hashlib.sha256`` of the same leaf bytes (the cost of hashing alone, no tree and no store). The
proof timings are per proof (generate from the stored tiles, then verify), for random leaves and
random size pairs of a 1,000,000-leaf log on the in-memory store; the goal is under 5 ms each.

Entry point: :func:`run` (not wired into the CLI).
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from qflare.ledger.log import TransparencyLog
from qflare.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from qflare.ledger.store import LogStore, MemoryLogStore

__all__ = ["run"]

_BATCH = 1000
_PROOF_TREE = 1_000_000


def _leaves(start: int, n: int) -> list[bytes]:
    # About the size of a real update_accepted entry.
    return [b"qflare-ledger-entry/v1\n" + i.to_bytes(8, "big") * 30 for i in range(start, start + n)]


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


if __name__ == "__main__":  # pragma: no cover
    run()
