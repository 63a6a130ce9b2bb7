"""Many concurrent authenticated devices against one real ``qflare server`` (``benchmarks/load_devices.py``).

One server process (``enclave.backend: none``: aggregation in process; SQLite in the run directory or a
fresh PostgreSQL schema) runs ``rounds`` rounds of the ``digits-wide`` task (996,938 float32 parameters, a
4 MB update) with every one of ``devices`` devices selected. ``workers`` > 1 runs ``qflare server
--workers K`` (PostgreSQL) instead, ``enclave`` the simulated enclave (one, shared by the workers), and
``task`` another task (``digits``: 154 KB updates). The devices are coroutines of this process
(asyncio; an ``httpx.AsyncClient`` per ``devices_per_client`` devices), each with its own enrolled composite
key, speaking the
device protocol exactly as :class:`~qflare.edge.client.DeviceClient` does: a heartbeat, then task
long-polls (``POST /v1/device/task?wait=S``, docs/protocol.md 11.3) until the server says ``train``, an
upload of a full-size update sealed with a one-time key (:func:`~qflare.crypto.envelope.seal_request`,
in a small thread pool: the 4 MB hash and AES-GCM), and long-polls again until ``done``. A failed request
is retried as an edge node retries, for as long as the run goes on; a device that fails otherwise stops the
run at once, and a run stopped by its timeout or the memory watchdog says where each device was waiting
(``unfinished_devices``); the event loop's lag is measured throughout (``loop_lag_seconds``).

Training is not simulated: a device uploads as soon as its envelope is sealed, so the server sees every
device's upload at once (the worst case for ingest). What is measured and checked:

- every upload the server acknowledged (200, sealed ``UpdateAccepted`` opened and checked) against the
  server's own record (``/v1/admin/rounds/{id}``): **lost** (acknowledged but not recorded), **double
  counted** (a device twice in a round, or a round whose aggregate's ``num_updates`` or ``total_examples``
  differs from the acknowledged uploads) and unacknowledged (recorded, but the device never got its 200);
- upload latency (POST sent to sealed answer received; sealing excluded), p50 / p90 / p99 / max, and an
  upload's wait (its first attempt sent to the answer of the one accepted: the ``503 server_busy``
  answers of the server's backpressure and the ``Retry-After`` waits they asked for included);
- throughput per round (uploads answered / the span from the first upload sent to the last answered):
  updates/s and envelope MB/s;
- the server's peak RSS (``VmHWM`` of ``/proc/<pid>/status``; with workers, the sum of every process's
  peak in the server's tree) and CPU seconds (the tree's), and this process's peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import ssl
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from qflare.bench.auth import process_tree, tree_cpu_seconds
from qflare.config import EnclaveHostConfig, GlobalConfig, RoundsConfig, ServerConfig
from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.envelope import ResponseOpener, seal_request
from qflare.crypto.keyfile import UnencryptedKeyWarning, parse_public_key, serialize_public_key
from qflare.edge.client import ENVELOPE_MEDIA_TYPE, KEEPALIVE_SECONDS, error_from_response
from qflare.errors import DecryptionFailed, QFlareError
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.sim.net import free_port
from qflare.sim.runner import Federation, start_server
from qflare.types import NDArrays

__all__ = ["LoadConfig", "peak_rss_mib", "run_load"]

TASK = "digits-wide"
_TWEAK = "fc2.bias"  # the tensor each device changes, so that every update's bytes differ


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Parameters
    ----------
    devices:
        Concurrent devices, all enrolled and all selected in every round.
    rounds:
        Rounds to run (each device uploads once per round).
    long_poll_seconds:
        ``wait`` of each task request (docs/protocol.md 11.3).
    postgres:
        A PostgreSQL URL (``postgresql+psycopg://user@127.0.0.1:5432/test``): the server runs on a fresh
        schema of it, dropped afterwards. None: SQLite in the run directory.
    seal_threads:
        Threads that build and seal the 4 MB uploads (serialise, SHA-256 and AES-GCM release the GIL).
    download:
        Also download the round's global model (4 MB, sealed) before uploading, as an edge node does.
    timeout_seconds:
        Per HTTP request (an upload waits behind every other device's).
    run_timeout_seconds:
        The whole run.
    max_rss_mib:
        The run is stopped (and says so) when the server's and this process's resident memory together
        exceed this.
    max_inflight:
        Uploads being sealed or sent at once, all devices together (0: unlimited, every device uploads as
        soon as it is told to train). A limit stands for devices that finish training at different times.
    devices_per_client:
        Devices that share one ``httpx.AsyncClient`` (one connection pool, about one connection per
        device). httpcore's pool walks its connections once per connection (a list of all of them for
        each idle one) every time a request starts or an answer is read: 2.6 ms per step with 200
        connections, 15 ms with 500, 62 ms with 1000 on the development machine. One pool for 1000
        devices (about 100 requests a second, two steps each) kept the event loop seconds late (5 s at
        most, 2.0 updates/s; 2.3 s and 3.6 updates/s with pools of 25: docs/benchmarks.md). 25
        devices a pool: well under a millisecond a step.
    retry_seconds, max_retry_seconds:
        A failed request (transport error, 5xx, 429, a plain refusal) is retried after ``retry_seconds``
        (jittered by -50..+50 %, at least the server's ``Retry-After``), doubled per failure in a row up
        to ``max_retry_seconds``, as an edge node does, for as long as the run goes on: a device never
        gives up; a sealed refusal (the server's word) ends the device, and the run stops at once and
        says which device and why.
    """

    devices: int
    rounds: int = 2
    long_poll_seconds: float = 10.0
    postgres: str | None = None
    seal_threads: int = 2
    download: bool = False
    timeout_seconds: float = 600.0
    run_timeout_seconds: float = 1800.0
    max_rss_mib: float = 14 * 1024.0  # server + this process: stop the run above it (the machine is shared)
    max_inflight: int = 0  # at most this many uploads sealed or in flight at once (0: no limit)
    workers: int = 1
    """``qflare server --workers`` (more than 1 needs ``postgres``)."""
    enclave: bool = False
    """The simulated enclave validates and aggregates (one enclave service shared by the workers)."""
    task: str = TASK
    devices_per_client: int = 25
    retry_seconds: float = 1.0
    max_retry_seconds: float = 10.0


@dataclass
class _Upload:
    device: str
    round_id: int
    num_examples: int
    envelope_bytes: int
    seal_seconds: float
    started: float = 0.0
    ended: float = 0.0
    status: int = 0  # HTTP status of the last attempt; 0: transport error
    reason: str = ""
    sha256: str = ""
    attempts: int = 0
    earlier_failed: bool = False  # an earlier upload of this device for this round got no answer
    sealed_refusal: bool = False  # the last refusal was sealed (the server's word, not a hint)
    busy_answers: int = 0  # 503 server_busy (turned away unread) before the last attempt
    first_started: float = 0.0  # the first attempt sent (the upload's wait includes every busy answer)


@dataclass
class _Stats:
    uploads: list[_Upload] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    task_polls: int = 0
    held_polls: int = 0
    downloads: int = 0
    inflight: int = 0
    max_inflight: int = 0
    busy: int = 0  # uploads turned away unread (503 server_busy), each re-sent after its Retry-After
    stopped: str = ""  # why the watchdog stopped the run, if it did
    where: dict[int, str] = field(default_factory=dict)  # per device: what it is doing or waiting for
    unfinished: Counter[str] = field(default_factory=Counter)  # where the devices were when the run stopped
    loop_lag: list[float] = field(default_factory=list)  # the generator's event loop: a 0.25 s sleep's lateness


def peak_rss_mib(pid: int | str = "self") -> float:
    """``VmHWM`` (peak resident set) of a process, MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM in /proc/{pid}/status")


def rss_mib(pid: int | str = "self") -> float:
    """``VmRSS`` (current resident set) of a process, MiB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(pid: int) -> float:
    """:func:`rss_mib` summed over the server's process tree (its workers and enclave)."""
    return sum(rss_mib(p) for p in process_tree(pid))


def tree_peak_rss_mib(pid: int) -> float:
    """:func:`peak_rss_mib` summed over the live process tree (an upper bound of the tree's peak)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += peak_rss_mib(p)
        except (OSError, ValueError):
            pass
    return total


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(np.ceil(q / 100 * len(sorted_values))) - 1))
    return sorted_values[k]


def _num_examples(index: int, round_id: int) -> int:
    return 1 + (7 * index + 13 * round_id) % 97


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new empty schema of the PostgreSQL database at ``url``: yields the URL that uses it; dropped after."""
    from sqlalchemy import create_engine, text

    schema = f"qflare_load_{os.getpid()}_{time.monotonic_ns()}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


class _Fleet:
    """The devices' side: keys, the shared client, the upload builder."""

    def __init__(self, cfg: LoadConfig, url: str, server_pub: XWingPublicKey, keys: list[SigningKey],
                 base: NDArrays, stats: _Stats) -> None:
        self.cfg, self.url, self.server_pub, self.keys, self.base, self.stats = cfg, url, server_pub, keys, base, stats
        self.pool = ThreadPoolExecutor(max_workers=cfg.seal_threads, thread_name_prefix="seal")
        self.slots = asyncio.Semaphore(cfg.max_inflight) if cfg.max_inflight > 0 else None
        self.rng = random.Random(0)

    @staticmethod
    def device_id(i: int) -> str:
        return f"load_{i:04d}"

    def _seal(self, i: int, path: str, payload: bytes, round_id: int | None) -> tuple[bytes, ResponseOpener]:
        return seal_request(self.keys[i], self.server_pub, device_id=self.device_id(i), method="POST", path=path,
                            round_id=round_id, payload=payload, now=time.time())

    def _build_upload(self, i: int, round_id: int) -> tuple[bytes, ResponseOpener, int, float]:
        t0 = time.perf_counter()
        arrays = dict(self.base)
        arrays[_TWEAK] = self.base[_TWEAK] + np.float32(1e-3 * (i + 1))
        n = _num_examples(i, round_id)
        blob = dump_arrays(arrays, {"num_examples": str(n), "train_loss": "0.5"})
        envelope, opener = self._seal(i, f"/v1/device/rounds/{round_id}/update", blob, round_id)
        return envelope, opener, n, time.perf_counter() - t0

    async def _call(self, client: httpx.AsyncClient, i: int, path: str) -> bytes:
        envelope, opener = self._seal(i, path, b"", None)
        r = await client.post(path, content=envelope, headers={"Content-Type": ENVELOPE_MEDIA_TYPE})
        if r.status_code != 200:
            raise error_from_response(r, opener)
        try:
            return bytes(opener.open(r.content))
        except DecryptionFailed:  # a 200 this device cannot open: counted apart from the server's refusals
            raise DecryptionFailed("the sealed answer does not open", reason="answer_does_not_open") from None

    async def device(self, client: httpx.AsyncClient, i: int) -> None:
        uploaded: set[int] = set()  # rounds this device's upload was acknowledged in (or refused for good)
        tries: dict[int, int] = {}
        await self._retrying(lambda: self._call(client, i, "/v1/device/heartbeat"), "heartbeat", i)
        wait = self.cfg.long_poll_seconds
        path = f"/v1/device/task?wait={wait:g}" if wait > 0 else "/v1/device/task"
        while True:
            task = json.loads(await self._retrying(lambda: self._call(client, i, path), "task", i))
            self.stats.task_polls += 1
            if task["status"] == "done":
                self.stats.where[i] = "done"
                return
            if task["status"] == "wait":
                if task.get("waited") is None:
                    await asyncio.sleep(min(float(task["retry_after"]), 0.5))
                else:
                    self.stats.held_polls += 1
                continue
            round_id = int(task["round_id"])
            if round_id in uploaded:  # the server asked again for a round this device already answered
                self.stats.errors["train_again_after_upload"] += 1
                await asyncio.sleep(0.5)
                continue
            tries[round_id] = tries.get(round_id, 0) + 1
            if tries[round_id] > 1:  # the last upload failed (3 attempts): wait, as an edge node backs off
                self.stats.where[i] = f"round {round_id}: waiting to upload again (upload {tries[round_id]})"
                await asyncio.sleep(self._backoff(tries[round_id] - 1))
            if self.cfg.download:
                model_path = f"/v1/device/model/{int(task['model_version'])}"
                await self._retrying(lambda p=model_path: self._call(client, i, p), "download", i)  # type: ignore[misc]
                self.stats.downloads += 1
            if self.slots is None:
                done = await self._upload(client, i, round_id, tries[round_id] > 1)
            else:
                self.stats.where[i] = f"round {round_id}: waiting for an upload slot (--max-inflight)"
                async with self.slots:
                    done = await self._upload(client, i, round_id, tries[round_id] > 1)
            if done:
                uploaded.add(round_id)  # else: the next task poll says train again, and the device re-uploads

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (jittered, doubling, capped; edge/node.py)."""
        base = min(self.cfg.retry_seconds * 2 ** max(failures - 1, 0), self.cfg.max_retry_seconds)
        return base * (0.5 + self.rng.random())

    async def _retrying(self, fn: Callable[[], Any], what: str, i: int) -> bytes:
        """``fn`` until it answers, as an edge node retries: for as long as the run goes on.

        Before, a device gave up after 5 failures in a row: its coroutine raised, unseen until the run's
        timeout, and the round waited for it (the 1000-device stall, ``docs/benchmarks.md``)."""
        failures = 0
        while True:
            self.stats.where[i] = what
            try:
                return bytes(await fn())
            except (httpx.TransportError, QFlareError) as exc:
                reason = str(getattr(exc, "reason", type(exc).__name__))
                self.stats.errors[f"{what}:{reason}"] += 1
                if isinstance(exc, QFlareError) and exc.authenticated:
                    raise  # a sealed refusal is the server's word: final (and a finding: the run stops)
                failures += 1
                self.stats.where[i] = f"{what}: waiting to retry after {reason}"
                await asyncio.sleep(max(self._backoff(failures),
                                        self._retry_after(getattr(exc, "retry_after", None))))

    def _retry_after(self, seconds: float | None) -> float:
        """The server's Retry-After plus up to half of it again (as an edge node waits: spread, never sooner)."""
        return 0.0 if seconds is None else seconds * (1.0 + 0.5 * self.rng.random())

    async def _upload(self, client: httpx.AsyncClient, i: int, round_id: int, earlier_failed: bool) -> bool:
        """Upload (retrying transport errors, 429 and 5xx); whether the round is settled for this device
        (acknowledged, or refused for a reason a retry cannot change)."""
        loop = asyncio.get_running_loop()
        path = f"/v1/device/rounds/{round_id}/update"
        up: _Upload | None = None
        attempt = 0
        while attempt < 3:
            attempt += 1
            self.stats.where[i] = f"round {round_id}: sealing its upload"
            envelope, opener, n, seal_s = await loop.run_in_executor(self.pool, self._build_upload, i, round_id)
            if up is None:
                up = _Upload(self.device_id(i), round_id, n, len(envelope), seal_s, earlier_failed=earlier_failed)
                self.stats.uploads.append(up)
            up.attempts = attempt
            self.stats.inflight += 1
            self.stats.max_inflight = max(self.stats.max_inflight, self.stats.inflight)
            up.started = time.perf_counter()
            up.first_started = up.first_started or up.started
            retry_after: float | None = None
            self.stats.where[i] = f"round {round_id}: uploading"
            try:
                r = await client.post(path, content=envelope, headers={"Content-Type": ENVELOPE_MEDIA_TYPE})
            except httpx.TransportError as exc:
                up.status, up.reason = 0, type(exc).__name__
            else:
                up.status = r.status_code
                if r.status_code == 200:
                    body = json.loads(opener.open(r.content))
                    up.sha256, up.reason = str(body["sha256"]), ""
                    if (body["device_id"], body["round_id"], body["num_examples"]) != (up.device, round_id, n):
                        up.reason = "acknowledged_something_else"
                else:
                    err = error_from_response(r, opener)
                    up.reason, up.sealed_refusal = err.reason, err.authenticated
                    retry_after = getattr(err, "retry_after", None)
            finally:
                up.ended = time.perf_counter()
                self.stats.inflight -= 1
                del envelope
            if up.status == 200:
                return True
            if up.status == 503 and up.reason == "server_busy":
                # Turned away unread (backpressure, server/ingest.py): wait as told and re-send, as an edge
                # node does while the round's deadline is ahead; no attempt used.
                self.stats.busy += 1
                up.busy_answers += 1
                attempt -= 1
                self.stats.where[i] = f"round {round_id}: turned away busy, waiting its Retry-After"
                await asyncio.sleep(self._retry_after(retry_after or 1.0))
                continue
            self.stats.errors[f"upload:{up.status}:{up.reason}"] += 1
            if up.status == 409 and up.reason == "duplicate_update" and (attempt > 1 or earlier_failed):
                return True  # an earlier attempt was recorded although its answer was lost: the server has it
            if up.status not in (0, 429, 500, 502, 503, 504):
                # A sealed refusal is the server's word: final. A plain one (e.g. stale_timestamp: the upload
                # waited too long in the server's queue) is a hint, as for an edge node: ask again and re-upload.
                return up.sealed_refusal
            self.stats.where[i] = f"round {round_id}: waiting to retry its upload after {up.reason or up.status}"
            await asyncio.sleep(max(self._backoff(attempt), self._retry_after(retry_after)))
        return False


async def _watch(fleet: _Fleet, server_pid: int, devices: list[asyncio.Task[None]],
                 log: Callable[[str], None]) -> None:
    """Stop the run (cancel every device) if the server and this process together pass ``max_rss_mib``;
    measure the event loop's lag (how late a 0.25 s sleep wakes); every 60 s, log where the devices are."""
    loop = asyncio.get_running_loop()
    stats, started, said = fleet.stats, loop.time(), loop.time()
    while True:
        total = tree_rss_mib(server_pid) + rss_mib()
        if total > fleet.cfg.max_rss_mib:
            stats.stopped = (f"stopped: server + load generator RSS {total:.0f} MiB > {fleet.cfg.max_rss_mib:.0f}"
                             f" MiB with {stats.inflight} uploads in flight")
            for t in devices:
                t.cancel()
            return
        t0 = loop.time()
        await asyncio.sleep(0.25)
        stats.loop_lag.append(max(0.0, loop.time() - t0 - 0.25))
        if loop.time() - said >= 60.0:
            said = loop.time()
            acked = sum(1 for u in stats.uploads if u.status == 200)
            recent = sorted(stats.loop_lag[-240:])
            log(f"{said - started:.0f} s: {acked} uploads acknowledged, {stats.inflight} in flight; event-loop lag "
                f"p50 {_percentile(recent, 50):.2f} s max {recent[-1] if recent else 0:.2f} s; devices: "
                + json.dumps(dict(Counter(_phase(w) for w in stats.where.values()).most_common(6))))


def _phase(where: str) -> str:
    """``where`` without its round number (a summary over devices)."""
    return where.split(": ", 1)[1] if where.startswith("round ") else where


TransportWrapper = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]
"""Wraps the devices' HTTP transport (tests inject transport errors with it)."""


async def _drive(fleet: _Fleet, server_pid: int, wrap: TransportWrapper | None = None,
                 log: Callable[[str], None] = lambda s: None) -> float:
    cfg = fleet.cfg
    n, stats = cfg.devices, fleet.stats
    per = max(1, cfg.devices_per_client)  # devices per connection pool: see LoadConfig.devices_per_client
    # Idle connections are dropped well before the server's 5 s keep-alive closes them (edge/client.py).
    limits = httpx.Limits(max_connections=per + 4, max_keepalive_connections=per + 4,
                          keepalive_expiry=KEEPALIVE_SECONDS)
    timeout = httpx.Timeout(cfg.timeout_seconds, connect=60.0)
    tls = ssl.create_default_context()  # plain http: unused, but each client would load its own CA bundle
    async with contextlib.AsyncExitStack() as stack:
        clients: list[httpx.AsyncClient] = []
        for _ in range(math.ceil(n / per)):
            transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=limits, verify=tls)
            if wrap is not None:
                transport = wrap(transport)
            clients.append(await stack.enter_async_context(
                httpx.AsyncClient(base_url=fleet.url, transport=transport, timeout=timeout)))
        t0 = time.perf_counter()
        devices = [asyncio.ensure_future(fleet.device(clients[i // per], i)) for i in range(n)]
        watch = asyncio.ensure_future(_watch(fleet, server_pid, devices, log))
        # A device that ends with an exception stops the run at once (the round would wait for it).
        done, pending = await asyncio.wait(devices, timeout=cfg.run_timeout_seconds,
                                           return_when=asyncio.FIRST_EXCEPTION)
        watch.cancel()
        failed = [(i, t.exception()) for i, t in enumerate(devices)
                  if t in done and not t.cancelled() and t.exception() is not None]
        for _, exc in failed:
            stats.errors[f"device_failed:{getattr(exc, 'reason', type(exc).__name__)}"] += 1
        if failed and not stats.stopped:
            i, exc = failed[0]
            stats.stopped = (f"stopped: {len(failed)} device(s) failed, the first {_Fleet.device_id(i)}: "
                             f"{type(exc).__name__}: {exc}")
        elif pending and not stats.stopped:
            stats.stopped = f"stopped: not finished after {cfg.run_timeout_seconds:.0f} s"
        unfinished = [i for i, t in enumerate(devices) if t in pending or t.cancelled()]
        stats.unfinished.update(_phase(stats.where.get(i, "not started")) for i in unfinished)
        for t in pending:
            t.cancel()
        await asyncio.gather(*devices, watch, return_exceptions=True)
        return time.perf_counter() - t0


def _reconcile(stats: _Stats, admin: httpx.Client) -> dict[str, Any]:
    """The acknowledged uploads against the server's record of every round."""
    acked: dict[tuple[str, int], _Upload] = {}
    for u in stats.uploads:
        if u.status == 200 and not u.reason:
            acked[(u.device, u.round_id)] = u
        elif u.status == 409 and u.reason == "duplicate_update" and (u.attempts > 1 or u.earlier_failed):
            acked[(u.device, u.round_id)] = u  # acknowledged by the refusal of its retry
    rounds = admin.get("/v1/admin/rounds").raise_for_status().json()
    recorded: dict[tuple[str, int], dict[str, Any]] = {}
    double, mismatched_rounds, per_round = 0, [], []
    for rnd in rounds:
        rid = int(rnd["round_id"])
        detail = admin.get(f"/v1/admin/rounds/{rid}").raise_for_status().json()
        ups = detail["updates"]
        devices = Counter(u["device_id"] for u in ups)
        double += sum(c - 1 for c in devices.values() if c > 1)
        for u in ups:
            recorded[(u["device_id"], rid)] = u
        mine = [u for (d, r), u in acked.items() if r == rid]
        metrics = rnd.get("metrics") or {}
        if rnd["status"] == "aggregated" and (metrics.get("num_updates") != len(mine)
                                              or metrics.get("total_examples") != sum(u.num_examples for u in mine)):
            mismatched_rounds.append(rid)
        per_round.append({"round_id": rid, "status": rnd["status"], "close_reason": rnd["close_reason"],
                          "recorded": len(ups), "acknowledged": len(mine),
                          "aggregated_updates": metrics.get("num_updates"),
                          "round_seconds": metrics.get("round_seconds"),
                          "aggregation_seconds": metrics.get("aggregation_seconds"),
                          # the owner's reads of updates other workers accepted, and those the enclave spared
                          "replayed_updates": metrics.get("replayed_updates"),
                          "replay_skipped_updates": metrics.get("replay_skipped_updates")})
    lost = sorted(f"{d}@{r}" for (d, r) in acked if (d, r) not in recorded)
    unacked = sorted(f"{d}@{r}" for (d, r) in recorded if (d, r) not in acked)
    wrong_hash = sorted(f"{d}@{r}" for (d, r), u in acked.items()
                        if u.sha256 and (d, r) in recorded and recorded[(d, r)]["sha256"] != u.sha256)
    return {"acknowledged": len(acked), "recorded": len(recorded), "lost": lost,
            "double_counted": double + len(mismatched_rounds), "rounds_whose_aggregate_differs": mismatched_rounds,
            "unacknowledged": unacked, "sha256_mismatch": wrong_hash, "rounds": per_round}


def _throughput(stats: _Stats) -> dict[str, Any]:
    ok = [u for u in stats.uploads if u.status == 200]
    lat = sorted(u.ended - u.started for u in ok)
    waited = sorted(u.ended - u.first_started for u in ok)
    spans, per_round = 0.0, {}
    for rid in sorted({u.round_id for u in ok}):
        mine = [u for u in ok if u.round_id == rid]
        span = max(u.ended for u in mine) - min(u.first_started for u in mine)
        spans += span
        per_round[rid] = {"updates_per_s": len(mine) / span,
                          "MB_per_s": sum(u.envelope_bytes for u in mine) / span / 1e6, "span_seconds": span}
    total_bytes = sum(u.envelope_bytes for u in ok)
    seal = sorted(u.seal_seconds for u in stats.uploads)
    return {
        "upload_latency_seconds": {"p50": _percentile(lat, 50), "p90": _percentile(lat, 90),
                                   "p99": _percentile(lat, 99), "max": lat[-1] if lat else float("nan"),
                                   "mean": statistics.fmean(lat) if lat else float("nan")},
        # From the first attempt sent to the answer of the last: what a device waits, busy answers included.
        "upload_wait_seconds": {"p50": _percentile(waited, 50), "p99": _percentile(waited, 99),
                                "max": waited[-1] if waited else float("nan")},
        "busy_answers": stats.busy,
        "updates_per_s": len(ok) / spans if spans else 0.0,
        "MB_per_s": total_bytes / spans / 1e6 if spans else 0.0,
        "per_round": per_round,
        "seal_ms_p50": 1000 * _percentile(seal, 50),
    }


def _lag(stats: _Stats) -> dict[str, float]:
    lag = sorted(stats.loop_lag)
    return {"p50": _percentile(lag, 50), "p99": _percentile(lag, 99), "max": lag[-1] if lag else float("nan")}


_LOG_MARKS = {"body_timeout": "connection closed: request body not received",
              "client_disconnected": "disconnected during", "traceback": "Traceback"}


def _server_log_counts(path: Path) -> dict[str, int]:
    """How often the server logged what could explain a client's transport error."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return {name: text.count(mark) for name, mark in _LOG_MARKS.items()}


def run_load(cfg: LoadConfig, *, workdir: Path | None = None, log: Callable[[str], None] = lambda s: None,
             transport: TransportWrapper | None = None) -> dict[str, Any]:
    """Run one load (see the module docstring); returns the figures and the reconciliation.

    ``transport`` wraps the devices' HTTP transport (a test's faults)."""
    with tempfile.TemporaryDirectory(prefix="qflare-load-") as tmp, contextlib.ExitStack() as stack:
        run_dir = Path(workdir or tmp)
        db = (stack.enter_context(fresh_schema(cfg.postgres)) if cfg.postgres
              else f"sqlite:///{(run_dir / 'qflare.db').resolve()}")
        config = GlobalConfig(
            task=cfg.task,
            server=ServerConfig(host="127.0.0.1", port=free_port(), db_url=db,
                                key_dir=str((run_dir / "server-keys").resolve())),
            rounds=RoundsConfig(total=cfg.rounds, fraction=1.0, min_devices=cfg.devices, min_quorum=cfg.devices,
                                deadline_seconds=cfg.run_timeout_seconds, active_window_seconds=120.0),
            enclave=EnclaveHostConfig(backend="simulated" if cfg.enclave else "none",
                                      work_dir=str((run_dir / "enclave").resolve())),
        )
        started = time.perf_counter()
        fed: Federation = stack.enter_context(start_server(config, run_dir,
                                                           server_args=("--workers", str(cfg.workers))))
        pid = fed.server.pid
        log(f"server up (pid {pid}, {'postgresql' if cfg.postgres else 'sqlite'}, {cfg.workers} workers, "
            f"{'enclave' if cfg.enclave else 'in process'}); enrolling {cfg.devices} devices")
        # The server's KEM key, or the enclave's: whichever the server serves.
        server_pub = parse_public_key(httpx.get(f"{fed.url}/v1/server/keys").json()["kem_public_key"].encode())
        assert isinstance(server_pub, XWingPublicKey)
        t0 = time.perf_counter()
        keys = [SigningKey.generate() for _ in range(cfg.devices)]
        keygen = time.perf_counter() - t0
        admin = stack.enter_context(fed.admin())
        t0 = time.perf_counter()
        for i, k in enumerate(keys):
            admin.post("/v1/admin/devices", json={"device_id": _Fleet.device_id(i),
                                                  "public_key": serialize_public_key(k.public_key()).decode()}
                       ).raise_for_status()
        enroll = time.perf_counter() - t0
        base, _ = load_arrays(admin.get("/v1/admin/models/0/safetensors").raise_for_status().content)
        stats = _Stats()
        fleet = _Fleet(cfg, fed.url, server_pub, keys, base, stats)
        log(f"enrolled in {enroll:.1f} s; {cfg.devices} devices long-polling, {cfg.rounds} rounds")
        cpu0 = tree_cpu_seconds(pid)
        try:
            drive = asyncio.run(_drive(fleet, pid, transport, log))
        finally:
            fleet.pool.shutdown()
        cpu = tree_cpu_seconds(pid) - cpu0
        server_rss = tree_peak_rss_mib(pid)
        server_log = _server_log_counts(run_dir / "logs" / "server.log")
        # The client's figures first: the server may be slow to answer the admin queries below.
        log("client side: " + json.dumps({"devices": cfg.devices, **_throughput(stats), "errors": dict(stats.errors),
                                          "stopped": stats.stopped, "unfinished_devices": dict(stats.unfinished),
                                          "loop_lag_seconds": _lag(stats), "server_peak_rss_MiB": server_rss,
                                          "loadgen_peak_rss_MiB": peak_rss_mib(), "drive_seconds": drive}))
        # The server may still be busy closing the last round (dropping its stored updates): wait for it.
        admin.timeout = httpx.Timeout(600.0)
        t0 = time.perf_counter()
        status = admin.get("/v1/admin/status").raise_for_status().json()
        status_seconds = time.perf_counter() - t0
        check = _reconcile(stats, admin)
        wall = time.perf_counter() - started
    return {
        "devices": cfg.devices, "rounds": cfg.rounds, "task": cfg.task,
        "database": "postgresql" if cfg.postgres else "sqlite", "workers": cfg.workers, "enclave": cfg.enclave,
        "long_poll_seconds": cfg.long_poll_seconds, "download": cfg.download, "max_inflight": cfg.max_inflight,
        "update_bytes": len(dump_arrays(base, {"num_examples": "1", "train_loss": "0.5"})),
        "envelope_bytes": max((u.envelope_bytes for u in stats.uploads), default=0),
        "uploads_sent": len(stats.uploads), "upload_attempts": sum(u.attempts for u in stats.uploads),
        **{k: v for k, v in check.items() if k != "rounds"},
        "rounds_completed": status["rounds_completed"], "rounds_failed": status["rounds_failed"],
        "server_accepted_updates": status["accepted_updates"], "server_rejected_updates": status["rejected_updates"],
        **_throughput(stats),
        "per_round_server": check["rounds"],
        "max_concurrent_uploads": stats.max_inflight,
        "task_polls": stats.task_polls, "held_polls": stats.held_polls, "downloads": stats.downloads,
        "errors": dict(stats.errors), "stopped": stats.stopped, "server_log": server_log,
        "unfinished_devices": dict(stats.unfinished), "devices_per_client": cfg.devices_per_client,
        "loop_lag_seconds": _lag(stats),
        "server_peak_rss_MiB": server_rss, "server_cpu_seconds": cpu,
        "loadgen_peak_rss_MiB": peak_rss_mib(),
        "keygen_seconds": keygen, "enroll_seconds": enroll, "drive_seconds": drive, "wall_seconds": wall,
        "status_after_run_seconds": status_seconds,
    }


def main_quiet(cfg: LoadConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_load` with the unencrypted-key warning of the server's demo keys silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        return run_load(cfg, log=log)
