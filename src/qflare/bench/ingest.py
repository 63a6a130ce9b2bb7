"""``qflare bench ingest``: MB/s of authenticated full-size update uploads against the bare endpoint's MB/s.

One server process (``task: digits-wide``, 996,938 float32 parameters, so an update is 3.99 MB;
``enclave.backend: none``; SQLite) serves the bare ``POST /bench/bare`` (read the body, answer small JSON:
the framework's cost of receiving the same bytes) and the real upload route
``POST /v1/device/rounds/{id}/update``: gateway (signature over the whole body, nonce and KEM-ciphertext
inserts, X-Wing, AES-GCM of 4 MB), parse and validate the safetensors update, store it, add it to the
round's streaming FedAvg, answer sealed. ``uploads`` devices are enrolled and selected with one more
that never uploads, so the round stays open and no aggregation is timed. Every envelope is sealed before
the timed phase (the figures measure the server); ``clients`` concurrent senders (asyncio + httpx) send
the bare bodies (the same size as an envelope), then the envelopes. Server CPU per upload comes from
``/proc/<pid>/stat`` over each phase.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from qflare.bench.auth import process_cpu_seconds
from qflare.config import EnclaveHostConfig, EvaluationConfig, GlobalConfig, RoundsConfig, ServerConfig
from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import read_public_key, serialize_public_key
from qflare.edge.client import ENVELOPE_MEDIA_TYPE
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.sim.net import free_port
from qflare.sim.runner import SimulationError, spawn_qflare, stop_process, wait_healthy

__all__ = ["run"]

TASK = "digits-wide"


async def _send(url: str, path: str, bodies: list[list[bytes]], content_type: str) -> tuple[float, int]:
    """Each sender's bodies in order, all senders at once; (seconds, non-200 answers)."""
    errors = 0
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def sender(mine: list[bytes]) -> None:
            nonlocal errors
            for body in mine:
                r = await client.post(path, content=body, headers={"Content-Type": content_type})
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(sender(b) for b in bodies))
        return time.perf_counter() - t0, errors


def _phase(pid: int, url: str, path: str, bodies: list[list[bytes]], ctype: str) -> dict[str, float]:
    cpu0 = process_cpu_seconds(pid)
    seconds, errors = asyncio.run(_send(url, path, bodies, ctype))
    cpu = process_cpu_seconds(pid) - cpu0
    n = sum(len(b) for b in bodies)
    nbytes = sum(len(x) for b in bodies for x in b)
    return {"seconds": seconds, "requests": n, "errors": errors, "MB_per_s": nbytes / seconds / 1e6,
            "requests_per_s": n / seconds, "server_cpu_ms_per_request": 1000 * cpu / n}


def _wait_round(admin: httpx.Client, proc: Any, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = admin.get("/v1/admin/status").raise_for_status().json()["current_round"]
        if current is not None:
            return int(current["round_id"])
        if proc.poll() is not None:
            raise SimulationError("the server exited before the round opened")
        time.sleep(0.2)
    raise SimulationError(f"no round opened within {timeout:.0f} s")


def run(*, uploads: int = 64, clients: int = 8, workdir: Path | None = None) -> dict[str, Any]:
    """Measure (see the module docstring); returns the figures."""
    with tempfile.TemporaryDirectory(prefix="qflare-bench-ingest-") as tmp:
        d = Path(workdir or tmp)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        port = free_port()
        cfg = GlobalConfig(
            task=TASK,
            enclave=EnclaveHostConfig(backend="none", work_dir=str(d / "enclave")),
            server=ServerConfig(port=port, db_url=f"sqlite:///{d / 'bench.db'}", key_dir=str(d / "keys"),
                                max_request_bytes=8 * 2**20),  # the bare endpoint takes an update-sized body
            # One device more than the uploads: the round stays open, no aggregation in the timed phase.
            rounds=RoundsConfig(total=1, min_devices=uploads + 1, min_quorum=1, deadline_seconds=3600),
            evaluation=EvaluationConfig(enabled=False),
        )
        (d / "g.json").write_text(cfg.model_dump_json())
        token = "bench-operator-token-0123456789"
        env = {**os.environ, "QFLARE_ADMIN_TOKEN": token, "OMP_NUM_THREADS": "1"}
        proc = spawn_qflare(["server", "--config", str(d / "g.json"), "--log-level", "warning", "--bench-endpoint",
                             "--no-run-artefacts"], d / "logs" / "server.log", env, cwd=d)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            server_pub = read_public_key(d / "keys" / "server-kem.pub")
            assert isinstance(server_pub, XWingPublicKey)
            keys = [SigningKey.generate() for _ in range(uploads + 1)]
            ids = [f"ingest_{i:03d}" for i in range(uploads + 1)]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as admin:
                for device_id, k in zip(ids, keys, strict=True):
                    admin.post("/v1/admin/devices", json={
                        "device_id": device_id, "public_key": serialize_public_key(k.public_key()).decode()
                    }).raise_for_status()
                base, _ = load_arrays(admin.get("/v1/admin/models/0/safetensors").raise_for_status().content)
                # Heartbeats make every device active (and warm the authenticated path); the round opens.
                beats = [[seal_request(k, server_pub, device_id=i, method="POST", path="/v1/device/heartbeat",
                                       round_id=None, payload=b"", now=time.time())[0]]
                         for i, k in zip(ids, keys, strict=True)]
                asyncio.run(_send(url, "/v1/device/heartbeat", beats, ENVELOPE_MEDIA_TYPE))
                round_id = _wait_round(admin, proc)
                path = f"/v1/device/rounds/{round_id}/update"
                build0 = time.perf_counter()
                blobs = []
                for i in range(uploads):
                    arrays = dict(base)
                    arrays["fc2.bias"] = base["fc2.bias"] + np.float32(1e-3 * (i + 1))
                    blobs.append(dump_arrays(arrays, {"num_examples": str(10 + i), "train_loss": "0.5"}))
                envelopes = [seal_request(keys[i], server_pub, device_id=ids[i], method="POST", path=path,
                                          round_id=round_id, payload=blobs[i], now=time.time())[0]
                             for i in range(uploads)]
                build = time.perf_counter() - build0
                del blobs
                size = len(envelopes[0])
                bare_body = os.urandom(size)
                _phase(proc.pid, url, "/bench/bare", [[bare_body] * 2 for _ in range(clients)],
                       "application/octet-stream")  # warm-up
                bare = _phase(proc.pid, url, "/bench/bare",
                              [[bare_body] * len(envelopes[c::clients]) for c in range(clients)],
                              "application/octet-stream")
                auth = _phase(proc.pid, url, path, [envelopes[c::clients] for c in range(clients)],
                              ENVELOPE_MEDIA_TYPE)
                recorded = admin.get("/v1/admin/status").raise_for_status().json()["current_round_updates"]
        finally:
            stop_process(proc)
    return {
        "task": TASK, "uploads": uploads, "clients": clients,
        "update_bytes": len(dump_arrays(base, {"num_examples": "10", "train_loss": "0.5"})), "envelope_bytes": size,
        "envelope_build_seconds": round(build, 2),
        "bare_MB_per_s": round(bare["MB_per_s"], 1),
        "authenticated_MB_per_s": round(auth["MB_per_s"], 1),
        "ratio": round(auth["MB_per_s"] / bare["MB_per_s"], 3),
        "authenticated_updates_per_s": round(auth["requests_per_s"], 2),
        "server_cpu_ms_per_upload": {"bare": round(bare["server_cpu_ms_per_request"], 2),
                                     "authenticated": round(auth["server_cpu_ms_per_request"], 2)},
        "errors": {"bare": int(bare["errors"]), "authenticated": int(auth["errors"])},
        "updates_recorded": recorded,
    }
