"""QKD benchmark: simulated pulses/s (quantum part and whole BB84 pipeline) and ETSI 014 requests/s.

``run(pulses, seconds)`` returns the figures as a dict; ``qflare bench qkd`` (or
``python benchmarks/bench_qkd.py``) prints them.

- ``quantum``: :func:`qflare.qkd.channel.transmit` alone (pulse generation, loss, dark counts,
  detection) over 10 km of fibre, ``pulses`` per call, repeated for ``seconds``.
- ``pipeline``: :func:`qflare.qkd.bb84.run_bb84` (quantum part, sifting, estimation, Cascade,
  verification, privacy amplification) with ``pulses`` per run, repeated for ``seconds``.
- ``decoy_pipeline``: :func:`run_bb84` with the decoy-state source (signal 0.5, decoy 0.1, vacuum;
  probabilities 0.7/0.2/0.1) over the same 10 km, ``pulses`` per run: Poisson pulses, decoy
  estimates, Cascade, privacy amplification.
- ``etsi014``: a KME pair started as a separate process (``python -m qflare.cli.qkd kme serve``) on
  127.0.0.1 with mutual TLS; one master SAE client calls enc_keys (one 256-bit key) and one slave SAE
  client calls dec_keys for that key, in a loop for ``seconds``, over kept-alive connections.
  Every enc_keys and every dec_keys counts as one request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel, transmit
from qflare.qkd.client import KMEClient
from qflare.qkd.pki import create_demo_pki
from qflare.qkd.source import Source

__all__ = ["run"]


def _repeat(seconds: float, step: Any) -> tuple[int, float]:
    calls = 0
    start = time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def bench_quantum(pulses: int, seconds: float) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(1)
    channel = Channel(distance_km=10.0)
    calls, elapsed = _repeat(seconds, lambda: transmit(pulses, channel, rng=rng))
    return {"pulses_per_s": calls * pulses / elapsed, "calls": calls, "seconds": elapsed}


DECOY_SOURCE = Source.decoy_state(0.5, 0.1, p_signal=0.7, p_decoy=0.2, p_vacuum=0.1)


def bench_pipeline(pulses: int, seconds: float, source: Source | None = None) -> dict[str, float]:
    channel = Channel(distance_km=10.0)
    bits = 0
    seed = 0

    def step() -> None:
        nonlocal bits, seed
        bits += run_bb84(pulses, channel, source=source, seed=seed).final_key_bits
        seed += 1

    calls, elapsed = _repeat(seconds, step)
    return {
        "pulses_per_s": calls * pulses / elapsed,
        "secret_bits_per_s": bits / elapsed,
        "calls": calls,
        "seconds": elapsed,
    }


def _start_kme(pki_dir: Path, keys: int) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [
        sys.executable, "-m", "qflare.cli.qkd", "kme", "serve",
        "--cert", str(pki_dir / "kme-a.pem"), "--key", str(pki_dir / "kme-a.key"),
        "--ca", str(pki_dir / "ca.pem"), "--port", "0",
        "--sae-a", "edge-1", "--sae-b", "server",
        "--initial-keys", str(keys), "--pulses-per-frame", "20000000", "--no-refill", "--seed", "7",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{") and '"kme_a"' in line:
            info = json.loads(line)
            return proc, info["kme_a"], info["kme_b"]
    proc.wait(timeout=10)
    raise RuntimeError(f"KME pair did not start (exit {proc.returncode})")


def bench_etsi(seconds: float, *, keys: int = 20_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_demo_pki(tmp, sae_ids=("edge-1", "server"))
        proc, url_a, url_b = _start_kme(pki.directory, keys)
        try:
            master = KMEClient(url_a, cert=pki.cert("edge-1"), key=pki.key("edge-1"), ca=pki.ca)
            slave = KMEClient(url_b, cert=pki.cert("server"), key=pki.key("server"), ca=pki.ca)
            with master, slave:
                master.status("server")  # open the master's connection before timing

                def step() -> None:
                    (key,) = master.enc_keys("server", size=256)
                    (same,) = slave.dec_keys("edge-1", [key.key_id], size=256)
                    if same.key != key.key:
                        raise RuntimeError("slave got another key than the master")

                calls, elapsed = _repeat(seconds, step)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    return {"requests_per_s": 2 * calls / elapsed, "key_pairs_per_s": calls / elapsed, "seconds": elapsed}


def run(pulses: int = 10_000_000, seconds: float = 3.0) -> dict[str, Any]:
    """Run the four benchmarks, each for about ``seconds``; figures in a dict."""
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "pulses_per_call": pulses,
        "quantum": bench_quantum(pulses, seconds),
        "pipeline": bench_pipeline(pulses, seconds),
        "decoy_pipeline": bench_pipeline(pulses, seconds, DECOY_SOURCE),
        "etsi014": bench_etsi(seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulses", type=int, default=10_000_000, help="pulses per simulator call")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each benchmark")
    parser.add_argument("--json", action="store_true", help="print the dict as JSON")
    args = parser.parse_args(argv)
    figures = run(args.pulses, args.seconds)
    if args.json:
        print(json.dumps(figures))
        return
    q, p, e = figures["quantum"], figures["pipeline"], figures["etsi014"]
    d = figures["decoy_pipeline"]
    print(f"quantum part : {q['pulses_per_s']:.3e} pulses/s  ({args.pulses:,} pulses per call, 10 km)")
    print(f"BB84 pipeline: {p['pulses_per_s']:.3e} pulses/s, {p['secret_bits_per_s']:.3e} secret bits/s")
    print(f"decoy BB84   : {d['pulses_per_s']:.3e} pulses/s, {d['secret_bits_per_s']:.3e} secret bits/s")
    print(f"ETSI 014 mTLS: {e['requests_per_s']:.0f} requests/s ({e['key_pairs_per_s']:.0f} enc+dec key pairs/s)")


if __name__ == "__main__":
    main()
