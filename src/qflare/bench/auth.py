"""``qflare bench auth``: throughput and server CPU of the authenticated endpoint against a bare one.

One server process serves both ``POST /bench/bare`` (read a body, answer small JSON) and the real
``POST /v1/device/heartbeat`` behind the post-quantum gateway, with the same 4 KiB payload. The load
generator (this process; asyncio + httpx, N concurrent clients) builds every signed envelope before the
timed phase, so the figures measure the server. Server CPU per request comes from the server process's
own CPU time (``/proc/<pid>/stat``, summed over its process tree: the workers and the enclave of a
``--workers`` server) over each phase; its split into KEM, signature and AEAD comes from
micro-benchmarks of the same operations in this process, the remainder being framework and storage.

:func:`run_scaling`: the same phases against ``qflare server --workers K`` on a fresh PostgreSQL schema
for each K (1, 2, 4 by default), one after the other in one run, each K's requests/s also relative to K=1.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qflare.config import EnclaveHostConfig, GlobalConfig, RateLimitConfig, RoundsConfig, ServerConfig
from qflare.crypto import SigningKey
from qflare.crypto.bench import run_benchmark
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import UnencryptedKeyWarning, parse_public_key, serialize_public_key
from qflare.sim.net import free_port
from qflare.sim.runner import spawn_qflare, stop_process, wait_healthy

HEARTBEAT = "/v1/device/heartbeat"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux ``/proc/<pid>/task/<tid>/children``)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
    return found


def tree_cpu_seconds(pid: int) -> float:
    """:func:`process_cpu_seconds` summed over :func:`process_tree` (processes that exited are not counted)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += process_cpu_seconds(p)
        except OSError:
            pass
    return total


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    server_cpu_seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_seconds / self.requests


async def _load(url: str, path: str, bodies: list[list[bytes]], content_type: str) -> tuple[float, int]:
    """Send each client's bodies in order, all clients concurrently; returns (seconds, non-200 count)."""
    errors = 0
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker(mine: list[bytes]) -> None:
            nonlocal errors
            for body in mine:
                r = await client.post(path, content=body, headers={"Content-Type": content_type})
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(b) for b in bodies))
        return time.perf_counter() - started, errors


def _phase(name: str, pid: int, url: str, path: str, bodies: list[list[bytes]], ctype: str) -> Phase:
    cpu0 = tree_cpu_seconds(pid)
    seconds, errors = asyncio.run(_load(url, path, bodies, ctype))
    return Phase(name, sum(len(b) for b in bodies), seconds, tree_cpu_seconds(pid) - cpu0, errors)


def run(
    *, requests: int = 3200, clients: int = 16, payload_size: int = 4096, workdir: Path | None = None,
    db_url: str | None = None, workers: int = 1, enclave: bool = False,
) -> dict[str, Any]:
    """Measure; returns the figures (see the module docstring).

    ``db_url``: the server's database (default: SQLite in the work directory); ``workers``: ``qflare server
    --workers`` (PostgreSQL); ``enclave``: the simulated enclave opens and seals every request (default: the
    web tier alone, in process; ``qflare bench enclave`` measures the enclave).
    """
    per_client = max(1, requests // clients)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(workdir or tmp)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        port = free_port()
        cfg = GlobalConfig(
            enclave=EnclaveHostConfig(backend="simulated", work_dir=str(d / "enclave")) if enclave
            else EnclaveHostConfig(backend="none"),
            server=ServerConfig(port=port, db_url=db_url or f"sqlite:///{d / 'bench.db'}", key_dir=str(d / "keys"),
                                max_request_bytes=payload_size + 16384,
                                # each bench device sends hundreds of heartbeats a second: lift its limit
                                rate_limits=RateLimitConfig(device_requests_per_second=1e6,
                                                            device_requests_burst=10**6)),
            rounds=RoundsConfig(min_devices=clients + 1, min_quorum=1),  # no round opens: heartbeats only
        )
        (d / "g.json").write_text(cfg.model_dump_json())
        token = "bench-operator-token-0123456789"
        env = {**os.environ, "QFLARE_ADMIN_TOKEN": token, "OMP_NUM_THREADS": "1"}
        proc = spawn_qflare(["server", "--config", str(d / "g.json"), "--log-level", "warning", "--bench-endpoint",
                             "--no-run-artefacts", "--workers", str(workers)],
                            d / "logs" / "server.log", env, cwd=d)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            server_pub = parse_public_key(httpx.get(f"{url}/v1/server/keys").json()["kem_public_key"].encode())
            keys = [SigningKey.generate() for _ in range(clients)]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin:
                for i, k in enumerate(keys):
                    admin.post("/v1/admin/devices", json={
                        "device_id": f"bench_{i:02d}", "public_key": serialize_public_key(k.public_key()).decode()
                    }).raise_for_status()
            payload = os.urandom(payload_size)
            warm = [[payload] * 20 for _ in range(clients)]
            bare_bodies = [[payload] * per_client for _ in range(clients)]
            build0 = time.perf_counter()
            envelopes = [
                [seal_request(k, server_pub, device_id=f"bench_{i:02d}", method="POST", path=HEARTBEAT,  # type: ignore[arg-type]
                              round_id=None, payload=payload, now=time.time())[0] for _ in range(per_client + 20)]
                for i, k in enumerate(keys)
            ]
            build_seconds = time.perf_counter() - build0
            warm_auth = [e[:20] for e in envelopes]
            auth_bodies = [e[20:] for e in envelopes]
            # Warm up both paths (connections, imports, caches), then the timed phases.
            _phase("warm-bare", proc.pid, url, "/bench/bare", warm, "application/octet-stream")
            _phase("warm-auth", proc.pid, url, HEARTBEAT, warm_auth, "application/vnd.qflare.envelope")
            bare = _phase("bare", proc.pid, url, "/bench/bare", bare_bodies, "application/octet-stream")
            auth = _phase("authenticated", proc.pid, url, HEARTBEAT, auth_bodies, "application/vnd.qflare.envelope")
        finally:
            stop_process(proc)
    micro = run_benchmark(iterations=200, payload_size=payload_size)
    t = micro.timings_ms
    crypto_ms = {"kem_decapsulate": t["kem_decapsulate"], "signature_verify": t["verify"],
                 "aead_decrypt_request": t["aead_decrypt_payload"], "aead_seal_response": t["device_open_response"]}
    framework_ms = auth.cpu_ms_per_request - sum(crypto_ms.values())
    return {
        "workers": workers,
        "database": "postgresql" if db_url and db_url.startswith("postgresql") else "sqlite",
        "enclave": enclave,
        "clients": clients,
        "payload_bytes": payload_size,
        "requests_per_phase": bare.requests,
        "envelope_build_seconds": round(build_seconds, 2),
        "bare_rps": round(bare.rps, 1),
        "authenticated_rps": round(auth.rps, 1),
        "ratio": round(auth.rps / bare.rps, 3),
        "errors": {"bare": bare.errors, "authenticated": auth.errors},
        "server_cpu_ms_per_request": {"bare": round(bare.cpu_ms_per_request, 3),
                                      "authenticated": round(auth.cpu_ms_per_request, 3)},
        "authenticated_cpu_split_ms": {**{k: round(v, 3) for k, v in crypto_ms.items()},
                                       "framework_and_storage": round(framework_ms, 3)},
        "wire_bytes_added_per_request": micro.request_overhead_bytes,
        "wire_bytes_added_per_response": micro.response_overhead_bytes,
    }


def run_scaling(postgres: str, *, workers: tuple[int, ...] = (1, 2, 4), requests: int = 3200, clients: int = 16,
                payload_size: int = 4096, enclave: bool = False) -> dict[str, Any]:
    """:func:`run` for each worker count on a fresh schema of ``postgres``, one after the other; each count's
    authenticated requests/s also as a multiple of the first count's."""
    from qflare.bench.load import fresh_schema

    runs: list[dict[str, Any]] = []
    for k in workers:
        with fresh_schema(postgres) as url:
            runs.append(run(requests=requests, clients=clients, payload_size=payload_size, db_url=url, workers=k,
                            enclave=enclave))
    first = runs[0]["authenticated_rps"]
    return {
        "database": "postgresql", "enclave": enclave, "clients": clients, "payload_bytes": payload_size,
        "cpus": os.cpu_count(),
        "by_workers": {str(r["workers"]): {
            "authenticated_rps": r["authenticated_rps"], "bare_rps": r["bare_rps"],
            "authenticated_vs_first": round(r["authenticated_rps"] / first, 2),
            "server_cpu_ms_per_request": r["server_cpu_ms_per_request"]["authenticated"],
            "errors": r["errors"]} for r in runs},
    }


def main() -> None:
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
