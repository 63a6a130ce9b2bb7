"""Enrolling a fleet into the enclave's sealed device registry: the journal against rewriting it whole.

Until 2026-12-03 every registry change re-sealed and rewrote the whole registry (O(n) per device, O(n^2) for
a fleet: a quarter of the enclave's samples in round 1 of a 1000-client run). Both strategies are timed here
in the same run on the same registrations, in a temporary directory:

- ``journal``: :meth:`SealedRegistryStore.append` (one sealed record per change, compaction when the
  journal outgrows the snapshot), what the enclave does now;
- ``rewrite``: :meth:`SealedRegistryStore.save` after every change, what it did before.

Usage: ``.venv/bin/python benchmarks/enclave_registry.py [--devices 100 1000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from qflare.crypto.signing import SigningKey
from qflare.enclave.registry import DeviceRegistration, DeviceRegistry
from qflare.enclave.sealing import SealingKey
from qflare.enclave.trusted.registry_store import SealedRegistryStore


def _enrol(registrations: list[DeviceRegistration], *, rewrite: bool) -> tuple[float, float]:
    """Seconds to record every registration, and to load the result in a new store."""
    with tempfile.TemporaryDirectory(prefix="qflare-bench-registry-") as tmp:
        sealing = SealingKey(b"r" * 32, b"m" * 32)
        store, registry = SealedRegistryStore(sealing, Path(tmp), "bench"), DeviceRegistry()
        store.save(registry)
        start = time.perf_counter()
        for registration in registrations:
            registry.apply(registration)
            if rewrite:
                store.save(registry)
            else:
                store.append(registry, registration)
        enrol = time.perf_counter() - start
        start = time.perf_counter()
        loaded = SealedRegistryStore(sealing, Path(tmp), "bench").load()
        load = time.perf_counter() - start
        assert loaded is not None and len(loaded) == len(registrations)
        return enrol, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = parser.parse_args()
    public_key = SigningKey.generate().public_key().to_bytes()  # one key: the cost is in the storage
    figures: dict[str, dict[str, float]] = {}
    for n in args.devices:
        registrations = [DeviceRegistration(device_id=f"edge_{i:05d}", public_key=public_key, key_source="mlkem",
                                            status="active", sequence=1) for i in range(n)]
        journal, journal_load = _enrol(registrations, rewrite=False)
        rewrite, rewrite_load = _enrol(registrations, rewrite=True)
        figures[str(n)] = {
            "journal_s": round(journal, 4), "rewrite_s": round(rewrite, 4),
            "journal_ms_per_device": round(1e3 * journal / n, 3), "rewrite_ms_per_device": round(1e3 * rewrite / n, 3),
            "speedup": round(rewrite / journal, 1), "journal_load_s": round(journal_load, 4),
            "rewrite_load_s": round(rewrite_load, 4),
        }
        print(f"{n:>6} devices: journal {journal:8.3f} s ({1e3 * journal / n:.3f} ms/device), "
              f"rewrite {rewrite:8.3f} s ({1e3 * rewrite / n:.3f} ms/device): {rewrite / journal:.1f}x; "
              f"load {journal_load:.3f} s / {rewrite_load:.3f} s")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
