"""Issue 12: half-sent headers, trickled bodies and huge headers against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.server.app import build_state, create_app
from qflare.server.transport import uvicorn_options
from tests.server.conftest import ADMIN, FakeClock, config_for
from tests.server.live import connect, read_response, serve


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    cfg = config_for(tmp_path)
    server = cfg.server.model_copy(update={"header_timeout_seconds": 0.5, "body_chunk_timeout_seconds": 0.5,
                                           "body_timeout_seconds": 2.0, "max_header_bytes": 8192})
    cfg = cfg.model_copy(update={"server": server})
    state = build_state(cfg, admin_token=ADMIN, clock=FakeClock())
    with serve(create_app(state, run_ticker=False), **uvicorn_options(cfg.server)) as p:
        yield p
    state.close()


def _one_response(s) -> bytes:  # type: ignore[no-untyped-def]
    """Exactly one HTTP response (head and Content-Length body), however the bytes are segmented."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(65536)
    assert len(body) == length
    return head


def _closed_within(s, seconds: float) -> bytes:  # type: ignore[no-untyped-def]
    s.settimeout(seconds)
    return read_response(s)


def test_half_sent_headers_are_dropped_at_the_header_deadline(port: int) -> None:
    socks = [connect(port) for _ in range(50)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    for s in socks:
        assert _closed_within(s, 5) == b""
    assert time.monotonic() - started < 4


def test_half_header_after_a_keep_alive_response_is_dropped_too(port: int) -> None:
    s = connect(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _one_response(s).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    started = time.monotonic()
    assert _closed_within(s, 5) == b""
    assert time.monotonic() - started < 3


def test_a_huge_header_is_answered_431(port: int) -> None:
    s = connect(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    out = _closed_within(s, 5)
    assert out.startswith(b"HTTP/1.1 431"), out[:100]
    assert b'"header_too_large"' in out


def test_a_trickled_body_is_dropped(port: int) -> None:
    s = connect(port)
    s.sendall(b"POST /v1/device/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
    started = time.monotonic()
    for _ in range(10):
        time.sleep(0.3)
        try:
            s.sendall(b"c")
        except OSError:
            break
    assert _closed_within(s, 5) == b""
    assert time.monotonic() - started < 4  # the 2 s body deadline, not the client's pace


def test_normal_requests_still_work_with_keep_alive(port: int) -> None:
    s = connect(port)
    for _ in range(3):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _one_response(s).startswith(b"HTTP/1.1 200")
    s.close()
