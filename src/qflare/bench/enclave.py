"""Throughput through the enclave boundary against the same work in process.

For 1M-parameter float32 updates (4 MB), each repetition times ``validate`` + ``accumulate`` of every
update in one round, alternating between the two backends so that machine noise hits both alike:

- ``envelope`` (the production path): the update arrives as a request envelope. In process: the
  server decapsulates and decrypts (``decrypt_envelope``) and hands the plaintext to
  ``InProcessAggregator``. Enclave: ``EnclaveAggregator`` sends the envelope across; the enclave
  decrypts, validates, accumulates, and returns the stored (sealed) form.
- ``plaintext``: the server already holds the update. The enclave additionally seals all of it for
  storage (AES-256-GCM over 4 MB), which the in-process backend does not do.

Signature checks, nonce checks and the database are outside both and not timed. ``tune_malloc`` (the
setting the enclave process always uses) is applied to this process too, so both sides allocate
alike; ``--no-tune`` shows the untuned in-process baseline.

    .venv/bin/python benchmarks/bench_enclave.py --updates 24 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qflare.crypto.envelope import decrypt_envelope, parse_envelope, seal_request
from qflare.crypto.kem import XWingPrivateKey, XWingPublicKey
from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.trusted.boot import tune_malloc
from qflare.fl.port import PlainUpdate, SealedUpdate
from qflare.fl.serialize import dump_arrays
from qflare.fl.spec import ModelSpec
from qflare.server.aggregation import InProcessAggregator

Mode = Literal["envelope", "plaintext"]
_ROUND = 1
_PATH = f"/v1/device/rounds/{_ROUND}/update"


def _updates(count: int, params: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        dump_arrays({"w": rng.standard_normal(params, dtype=np.float32)}, {"num_examples": str(10 + i)})
        for i in range(count)
    ]


def _envelopes(updates: list[bytes], kem: XWingPublicKey, device: SigningKey) -> list[bytes]:
    return [
        seal_request(device, kem, device_id=f"bench-{i}", method="POST", path=_PATH, round_id=_ROUND,
                     payload=blob, now=time.time())[0]
        for i, blob in enumerate(updates)
    ]  # fmt: skip


def _time_round(begin: Callable[[], None], step: Callable[[bytes], None], inputs: list[bytes]) -> float:
    begin()
    start = time.perf_counter()
    for item in inputs:
        step(item)
    return time.perf_counter() - start


def _figures(seconds: list[float], count: int, update_bytes: int) -> dict[str, float]:
    best, median = min(seconds), statistics.median(seconds)
    return {
        "median_s": round(median, 4),
        "updates_per_s": round(count / median, 1),
        "mb_per_s": round(count * update_bytes / median / 1e6, 1),
        "best_updates_per_s": round(count / best, 1),
    }


def _measure_mode(
    mode: Mode,
    enclave: EnclaveAggregator,
    blobs: list[bytes],
    base: bytes,
    spec: ModelSpec,
    repeats: int,
    device: SigningKey,
    server_kem: XWingPrivateKey,
) -> tuple[list[float], list[float]]:
    """Seconds per round for the in-process and the enclave backend, alternating."""
    inproc = InProcessAggregator()
    if mode == "envelope":
        local_inputs = _envelopes(blobs, server_kem.public_key(), device)
        enclave_inputs = _envelopes(blobs, enclave.public_keys().kem, device)

        def local_step(data: bytes) -> None:
            env = parse_envelope(data, max_size=1 << 30)
            payload, _ = decrypt_envelope(env, server_kem, allowed_key_sources={"mlkem"})
            inproc.accumulate(inproc.validate(_ROUND, PlainUpdate(payload)))
    else:
        local_inputs = enclave_inputs = blobs

        def local_step(data: bytes) -> None:
            inproc.accumulate(inproc.validate(_ROUND, PlainUpdate(data)))

    def enclave_step(data: bytes) -> None:
        update = SealedUpdate(data) if enclave.inputs == "envelope" else PlainUpdate(data)
        enclave.accumulate(enclave.validate(_ROUND, update))

    local_s: list[float] = []
    enclave_s: list[float] = []
    enclave_base = base  # the enclave starts each round only from the model it signed last
    for rep in range(repeats + 1):  # the first repetition warms caches and is dropped
        t_local = _time_round(lambda: inproc.begin_round(_ROUND, base, spec), local_step, local_inputs)
        inproc.finalize(_ROUND)
        t_encl = _time_round(
            lambda b=enclave_base: enclave.begin_round(_ROUND, b, spec), enclave_step, enclave_inputs  # type: ignore[misc]
        )
        enclave_base = enclave.finalize(_ROUND)
        if rep:
            local_s.append(t_local)
            enclave_s.append(t_encl)
    return local_s, enclave_s


def run(
    *,
    updates: int = 24,
    params: int = 1_000_000,
    repeats: int = 5,
    modes: tuple[Mode, ...] = ("envelope", "plaintext"),
    tune: bool = True,
    seed: int = 0,
    work_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Measure both modes; returns the figures (also what ``__main__`` prints as JSON)."""
    config = EnclaveConfig() if checkpoint_every is None else EnclaveConfig(checkpoint_every=checkpoint_every)
    tuned = tune_malloc() if tune else False
    spec = ModelSpec.from_arrays({"w": np.zeros(params, np.float32)})
    base = dump_arrays(spec.zeros())
    blobs = _updates(updates, params, seed)
    update_bytes = len(blobs[0])
    device = SigningKey.generate()
    server_kem = XWingPrivateKey.generate()
    result: dict[str, Any] = {
        "params": params,
        "update_bytes": update_bytes,
        "updates_per_round": updates,
        "repeats": repeats,
        "malloc_tuned": tuned,
        "checkpoint_every": config.checkpoint_every,
    }
    with tempfile.TemporaryDirectory(prefix="qflare-bench-enclave-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for mode in modes:
            enclave = EnclaveAggregator.launch(root / mode, inputs=mode, config=config)
            try:
                local_s, enclave_s = _measure_mode(mode, enclave, blobs, base, spec, repeats, device, server_kem)
            finally:
                enclave.close()
            local = _figures(local_s, updates, update_bytes)
            inside = _figures(enclave_s, updates, update_bytes)
            result[mode] = {
                "inprocess": local,
                "enclave": inside,
                "ratio": round(inside["updates_per_s"] / local["updates_per_s"], 3),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=24, help="updates per round")
    parser.add_argument("--params", type=int, default=1_000_000, help="float32 parameters per update")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per backend (after one warm-up)")
    parser.add_argument("--mode", choices=["envelope", "plaintext", "both"], default="both")
    parser.add_argument("--no-tune", action="store_true", help="leave this process's malloc at glibc defaults")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="enclave checkpoint interval (updates)")
    args = parser.parse_args()
    modes: tuple[Mode, ...] = ("envelope", "plaintext") if args.mode == "both" else (args.mode,)
    out = run(
        updates=args.updates,
        params=args.params,
        repeats=args.repeats,
        modes=modes,
        tune=not args.no_tune,
        checkpoint_every=args.checkpoint_every,
    )
    for mode in modes:
        r = out[mode]
        print(
            f"{mode:9s} in-process {r['inprocess']['updates_per_s']:7.1f} upd/s {r['inprocess']['mb_per_s']:7.1f} MB/s"
            f" | enclave {r['enclave']['updates_per_s']:7.1f} upd/s {r['enclave']['mb_per_s']:7.1f} MB/s"
            f" | ratio {r['ratio']:.2f}x"
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
