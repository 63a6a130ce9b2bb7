"""Issue 12, "Load": uploads beyond server.max_uploads_in_flight are answered 503 server_busy with
Retry-After before their body is read; none is lost, none accepted twice (a real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from qflare.crypto import SigningKey
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import serialize_public_key
from qflare.fl.port import UpdateInput, ValidatedUpdate
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.server.aggregation import InProcessAggregator
from qflare.server.app import build_state, create_app
from qflare.server.ingest import UploadGate
from qflare.server.state import ServerState
from qflare.server.transport import uvicorn_options
from tests.server.conftest import ADMIN, FakeClock, config_for
from tests.server.live import connect, read_response, serve

CAP = 2
DEVICES = 6


class _HeldAggregator(InProcessAggregator):
    """Validation waits until the test opens the gate: uploads stay in flight as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        self.entered.release()
        assert self.release.wait(30)
        return super().validate(round_id, update)


@dataclass
class _Live:
    url: str
    state: ServerState
    backend: _HeldAggregator
    keys: dict[str, SigningKey]
    clock: FakeClock

    def envelope(self, device: str, round_id: int, payload: bytes) -> bytes:
        path = f"/v1/device/rounds/{round_id}/update"
        return seal_request(self.keys[device], self.state.gateway.opener.kem_public_key(), device_id=device,
                            method="POST", path=path, round_id=round_id, payload=payload, now=self.clock())[0]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[_Live]:
    cfg = config_for(tmp_path, total=1, min_devices=DEVICES, min_quorum=DEVICES)
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"max_uploads_in_flight": CAP})})
    backend = _HeldAggregator()
    clock = FakeClock()
    state = build_state(cfg, admin_token=ADMIN, clock=clock, backend=backend)
    keys = {f"edge_{i}": SigningKey.generate() for i in range(DEVICES)}
    with serve(create_app(state, run_ticker=False), **uvicorn_options(cfg.server)) as port:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            for d, k in keys.items():
                admin.post("/v1/admin/devices", json={"device_id": d, "public_key": serialize_public_key(
                    k.public_key()).decode()}).raise_for_status()
        for d in keys:  # active: the round opens with every device selected
            state.repo.touch_device(d, now=clock(), min_interval=0)
        state.orchestrator.tick()
        yield _Live(url, state, backend, keys, clock)
    backend.release.set()
    state.close()


def _update(state: ServerState, n: int) -> bytes:
    arrays, _ = load_arrays(state.repo.model_blob(0), state.orchestrator.spec)
    return dump_arrays(arrays, {"num_examples": str(n), "train_loss": "0.5"})


def _post(url: str, path: str, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as c:
        return c.post(path, content=body, headers={"Content-Type": "application/vnd.qflare.envelope"})


def test_uploads_beyond_the_cap_are_answered_busy_and_none_is_lost_or_doubled(live: _Live) -> None:
    # Prepare: the round is open; CAP uploads are held in validation (in flight)
    rnd = live.state.orchestrator.current_round()
    assert rnd is not None and len(rnd.selected) == DEVICES
    path = f"/v1/device/rounds/{rnd.round_id}/update"
    devices = sorted(live.keys)
    pool = ThreadPoolExecutor(DEVICES)
    held = [pool.submit(_post, live.url, path, live.envelope(d, rnd.round_id, _update(live.state, 10 + i)))
            for i, d in enumerate(devices[:CAP])]
    for _ in range(CAP):
        assert live.backend.entered.acquire(timeout=20)

    # Execute: the other devices upload while the cap is taken
    busy = [_post(live.url, path, live.envelope(d, rnd.round_id, _update(live.state, 10 + CAP + i)))
            for i, d in enumerate(devices[CAP:])]
    events_while_busy = live.state.repo.count_events_by_reason(("request_rejected", "update_rejected"))
    live.backend.release.set()
    first = [f.result(timeout=30) for f in held]
    # each turned-away device re-sends with a fresh envelope, as an edge node does
    again = [_post(live.url, path, live.envelope(d, rnd.round_id, _update(live.state, 10 + CAP + i)))
             for i, d in enumerate(devices[CAP:])]
    resent = _post(live.url, path, live.envelope(devices[0], rnd.round_id, _update(live.state, 10)))

    # Assert: the excess was refused busy with Retry-After, unread and unrecorded
    for r in busy:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["reason"] == "server_busy"
        assert int(r.headers["retry-after"]) >= 1
    assert events_while_busy == {}  # a busy answer records nothing
    assert [r.status_code for r in first] == [200] * CAP
    assert [r.status_code for r in again] == [200] * (DEVICES - CAP)
    assert resent.status_code == 409  # an accepted update is never accepted twice
    # none lost, none doubled: every device once, and the round closed with all of them
    closed = live.state.repo.get_round(rnd.round_id)
    assert closed is not None and closed.status == "aggregated"
    assert closed.metrics is not None and closed.metrics["num_updates"] == DEVICES
    assert closed.metrics["total_examples"] == sum(10 + i for i in range(DEVICES))
    assert sorted(u.device_id for u in live.state.repo.round_updates(rnd.round_id)) == devices
    pool.shutdown()


def test_a_busy_answer_keeps_the_connection_usable(live: _Live) -> None:
    # Prepare: the cap taken by held uploads
    rnd = live.state.orchestrator.current_round()
    assert rnd is not None
    path = f"/v1/device/rounds/{rnd.round_id}/update"
    devices = sorted(live.keys)
    pool = ThreadPoolExecutor(CAP)
    held = [pool.submit(_post, live.url, path, live.envelope(d, rnd.round_id, _update(live.state, 10)))
            for d in devices[:CAP]]
    for _ in range(CAP):
        assert live.backend.entered.acquire(timeout=20)
    # Execute: a body far larger than the header limit, answered before it is read, then a second request
    # on the same connection
    s = connect(int(live.url.rsplit(":", 1)[1]))
    body = b"\0" * (4 * 2**20)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = read_response(s)
    live.backend.release.set()
    # Assert: the 503 with its reason, then the next request's answer on the same connection
    assert out.startswith(b"HTTP/1.1 503"), out[:200]
    assert b'"server_busy"' in out and b"retry-after: " in out.lower()
    assert out.count(b"HTTP/1.1 200 OK") == 1 and b'{"status":"ok"' in out.split(b"HTTP/1.1 200 OK")[1], out[-300:]
    assert [f.result(timeout=30).status_code for f in held] == [200] * CAP
    pool.shutdown()


def test_retry_after_grows_with_the_devices_turned_away() -> None:
    # Prepare: a gate of 2 whose uploads hold their slot 2 s each (1 upload/s gets through)
    now = [0.0]
    gate = UploadGate(2, clock=lambda: now[0], max_retry_after=60)
    assert gate.try_enter() and gate.try_enter()
    for _ in range(50):
        gate.leave(2.0)
        assert gate.try_enter()
    # Execute / Assert: one device turned away waits about one slot; a hundred wait longer, up to the bound
    assert not gate.try_enter()
    few = gate.retry_after()
    for _ in range(100):
        assert not gate.try_enter()
    many = gate.retry_after()
    for _ in range(10_000):
        gate.try_enter()
    assert 1 <= few < many <= gate.retry_after() == 60
    assert gate.active == gate.peak == 2 and gate.refused == 10_101
    # the turned-away devices are forgotten once a retry interval has passed
    now[0] += 61
    assert not gate.try_enter()
    assert gate.retry_after() == few
