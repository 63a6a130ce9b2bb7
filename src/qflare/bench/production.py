"""The production aggregation path against Flower's plaintext ``aggregate_inplace``, timed in one run.

*QFLARE*: every update is a safetensors payload inside a one-time X-Wing request envelope, handed to
an :class:`~qflare.enclave.backend.EnclaveAggregator` (a simulated-enclave process, as the server
runs it): the enclave copies it out of the shared region, decapsulates and decrypts it, hashes it
(SHA-256, for the receipt and the signed ledger entry), parses and validates it (spec, NaN/Inf, step
norm from the base model), and the host's ``accumulate`` folds it into the streaming FedAvg. The
host keeps what a restarted enclave would need (see ``host_held_MiB_max``). ``finalize`` (the
average, serialised and signed) is timed separately.

*Flower*: its ``aggregate_inplace`` (``flwr/server/strategy/aggregate.py``, Flower 1.x) on the same
values in Flower's wire form (one ``np.save`` buffer per tensor, as ``ndarray_to_bytes`` makes them):
``parameters_to_ndarrays`` (``np.load`` of each tensor), scale each client's arrays in place by
``n_i / total``, add them layer by layer. Flower is not a QFLARE dependency: this re-implements those
few lines (its arithmetic and its deserialisation), it does not import Flower.

The two alternate, repetition by repetition, so machine noise hits both alike; medians are reported.
CPU time is reported beside wall time (a loaded machine stretches wall time, CPU time much less): the
enclave process's (``/proc/<pid>/stat``, all its threads) and this process's (the host side, or
Flower) for the same stretch.
Both run with the enclave's allocator settings (:func:`~qflare.enclave.trusted.boot.tune_malloc`,
applied to this process too). Device signatures, nonces and the database are outside both.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial, reduce
from pathlib import Path
from typing import Any

import numpy as np

from qflare.crypto.envelope import seal_request
from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.trusted.boot import tune_malloc
from qflare.fl.port import SealedUpdate
from qflare.fl.serialize import dump_arrays
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["flower_aggregate_inplace", "flower_bytes", "run"]

_ROUND = 1
_PATH = f"/v1/device/rounds/{_ROUND}/update"


def flower_bytes(arrays: NDArrays) -> list[bytes]:
    """Flower's wire form of a client's arrays: ``ndarray_to_bytes`` (``np.save``, no pickle) per tensor."""
    out = []
    for a in arrays.values():
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        out.append(buf.getvalue())
    return out


def flower_aggregate_inplace(results: Sequence[tuple[list[bytes], int]]) -> list[np.ndarray]:
    """Flower's ``aggregate_inplace`` over ``(tensors as npy bytes, num_examples)`` (re-implemented)."""
    total = sum(n for _, n in results)
    scaling = np.asarray([n / total for _, n in results])

    def inplace(x: np.ndarray, y: Any, op: np.ufunc) -> np.ndarray:
        return op(x, y, out=x) if np.can_cast(y, x.dtype, casting="same_kind") else op(x, np.array(y, x.dtype), out=x)

    def load(tensors: list[bytes]) -> list[np.ndarray]:  # parameters_to_ndarrays
        return [np.load(io.BytesIO(t), allow_pickle=False) for t in tensors]

    params = [inplace(x, scaling[0], np.multiply) for x in load(results[0][0])]
    for i, (tensors, _) in enumerate(results[1:], start=1):
        res = (inplace(x, scaling[i], np.multiply) for x in load(tensors))
        params = [reduce(partial(inplace, op=np.add), pair) for pair in zip(params, res, strict=True)]
    return params


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _updates(clients: int, params: int, seed: int) -> list[tuple[NDArrays, int]]:
    rng = np.random.default_rng(seed)
    sizes = [params // 2, params // 4, params // 8, params - params // 2 - params // 4 - params // 8]
    return [({f"t{i}": rng.standard_normal(s, dtype=np.float32) * np.float32(0.01) for i, s in enumerate(sizes)},
             int(rng.integers(50, 500))) for _ in range(clients)]


def run(*, clients: int = 20, params: int = 10_000_000, repeat: int = 3, seed: int = 0,
        checkpoint_every: int | None = None) -> dict[str, Any]:
    """Time both (medians over ``repeat`` alternating repetitions, after one warm-up); figures in s, GB/s, MiB."""
    tuned = tune_malloc()
    config = EnclaveConfig() if checkpoint_every is None else EnclaveConfig(checkpoint_every=checkpoint_every)
    updates = _updates(clients, params, seed)
    spec = ModelSpec.from_arrays(updates[0][0])
    base = dump_arrays(spec.zeros())
    flower_in = [(flower_bytes(arrays), n) for arrays, n in updates]
    payloads = [dump_arrays(arrays, {"num_examples": str(n)}) for arrays, n in updates]
    del updates
    gb = clients * params * 4 / 1e9
    device = SigningKey.generate()
    flower_s: list[float] = []
    enclave_s: list[float] = []
    finalize_s: list[float] = []
    held: list[int] = []
    cpu: dict[str, list[float]] = {"flower": [], "host": [], "enclave": []}
    with tempfile.TemporaryDirectory(prefix="qflare-bench-production-") as tmp:
        agg = EnclaveAggregator.launch(Path(tmp) / "enclave", inputs="envelope", config=config)
        try:
            kem = agg.public_keys().kem
            envelopes = [seal_request(device, kem, device_id=f"bench-{i}", method="POST", path=_PATH,
                                      round_id=_ROUND, payload=p, now=time.time())[0]
                         for i, p in enumerate(payloads)]  # fmt: skip
            del payloads
            model = base
            pid = agg.enclave.pid
            for rep in range(repeat + 1):  # the first repetition warms caches and is dropped
                t0, c0 = time.perf_counter(), time.process_time()
                flower_aggregate_inplace(flower_in)
                t_flower, c_flower = time.perf_counter() - t0, time.process_time() - c0
                agg.begin_round(_ROUND, model, spec)
                most = 0
                e0 = _process_cpu_s(pid)
                t0, c0 = time.perf_counter(), time.process_time()
                for env in envelopes:
                    agg.accumulate(agg.validate(_ROUND, SealedUpdate(env)))
                    most = max(most, agg.held_bytes(_ROUND))
                t_enclave, c_host = time.perf_counter() - t0, time.process_time() - c0
                e1 = _process_cpu_s(pid)
                t0 = time.perf_counter()
                model = agg.finalize(_ROUND)
                t_final = time.perf_counter() - t0
                if rep:
                    flower_s.append(t_flower)
                    enclave_s.append(t_enclave)
                    finalize_s.append(t_final)
                    held.append(most)
                    cpu["flower"].append(c_flower)
                    cpu["host"].append(c_host)
                    if e0 is not None and e1 is not None:
                        cpu["enclave"].append(e1 - e0)
        finally:
            agg.close()
    flower, inside, final = (statistics.median(s) for s in (flower_s, enclave_s, finalize_s))
    cpu_med = {k: statistics.median(v) if v else None for k, v in cpu.items()}
    ours_cpu = None if cpu_med["enclave"] is None else cpu_med["enclave"] + (cpu_med["host"] or 0.0)
    flower_cpu = cpu_med["flower"]
    return {
        "clients": clients, "params": params, "update_MiB": round(params * 4 / 2**20, 1), "repeat": repeat,
        "malloc_tuned": tuned, "checkpoint_every": config.checkpoint_every, "numpy": np.__version__,
        "flower_aggregate_inplace": {"median_s": flower, "GB_per_s": gb / flower, "runs_s": flower_s},
        "enclave_validate_accumulate": {"median_s": inside, "GB_per_s": gb / inside, "runs_s": enclave_s},
        "enclave_finalize": {"median_s": final, "runs_s": finalize_s},
        "enclave_with_finalize_GB_per_s": gb / (inside + final),
        "enclave_vs_flower_speed": flower / inside,
        "enclave_with_finalize_vs_flower_speed": flower / (inside + final),
        "host_held_MiB_max": round(max(held) / 2**20, 1),
        # CPU seconds of validate + accumulate (enclave process, all threads; host: this process) and of Flower
        "cpu_s_median": cpu_med, "cpu_s_runs": cpu,
        "enclave_plus_host_cpu_vs_flower_cpu": None if ours_cpu is None or not flower_cpu else ours_cpu / flower_cpu,
    }
