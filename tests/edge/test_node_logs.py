"""What a new user hit by hand: a lone edge waited silently, an edge started before its server exited, and
retry lines omitted the cause. Each is reproduced here without a server (httpx.MockTransport)."""

from __future__ import annotations

import logging

import httpx
import pytest

from qflare.config import RetryConfig
from qflare.edge.client import ServerUnavailable
from qflare.edge.node import EdgeNode, GaveUp, NodeStats
from qflare.edge.setup import connect
from tests.edge.test_client import _cfg, _client, _sealed


def test_a_waiting_node_logs_what_it_waits_for_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the server answers "wait" with a reason three times, then with another, then "done".
    lone = b'{"status": "wait", "retry_after": 0.1, "reason": "waiting for 2 active devices (1 of 2 active)"}'
    other = b'{"status": "wait", "retry_after": 0.1, "reason": "not selected for round 1; waiting for the next round"}'
    answers = [_sealed(lone)[0]] * 3 + [_sealed(other)[0], _sealed(b'{"status": "done", "retry_after": 0}')[0]]
    node = EdgeNode(_cfg(), _client(lambda req: answers.pop(0)(req)), sleep=lambda s: None)
    # Execute
    with caplog.at_level(logging.INFO, logger="qflare.edge"):
        node.run()
    # Assert: each reason once, in order.
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["edge_01: waiting for 2 active devices (1 of 2 active)",
                     "edge_01: not selected for round 1; waiting for the next round"]


def test_each_retry_line_names_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    done, _ = _sealed(b'{"status": "done", "retry_after": 0}')
    answers: list[object] = [httpx.ConnectError("Connection refused")] * 2 + [done]

    def handler(req: httpx.Request) -> httpx.Response:
        nxt = answers.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt(req)  # type: ignore[operator]

    node = EdgeNode(_cfg(), _client(handler), sleep=lambda s: None)
    with caplog.at_level(logging.INFO, logger="qflare.edge"):
        node.run()
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert all("server_unavailable" in m and "Connection refused" in m for m in retries), retries


def test_an_edge_started_before_its_server_retries_building_its_client(caplog: pytest.LogCaptureFixture) -> None:
    # Found by hand: with a pinned fingerprint the key fetch at start-up raised and `qflare edge` exited.
    attempts: list[int] = []

    def build() -> object:
        attempts.append(1)
        if len(attempts) < 3:
            raise ServerUnavailable("cannot fetch the server key: [Errno 111] Connection refused")
        return "client"

    sleeps: list[float] = []
    cfg = _cfg(retry=RetryConfig(initial_seconds=0.5, max_seconds=10))
    with caplog.at_level(logging.INFO, logger="qflare.edge"):
        assert connect(build, cfg, sleep=sleeps.append) == "client"  # type: ignore[arg-type, comparison-overlap]
    assert sleeps == [0.5, 1.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("Connection refused" in m and "retrying in" in m for m in lines), lines


def test_an_edge_gives_up_waiting_for_its_server_when_told_to() -> None:
    t = [0.0]

    def build() -> object:
        raise ServerUnavailable("cannot fetch the server key: refused")

    def sleep(s: float) -> None:
        t[0] += s

    cfg = _cfg(retry=RetryConfig(initial_seconds=1.0, max_seconds=2.0, give_up_after_seconds=5.0))
    with pytest.raises(GaveUp, match="refused"):
        connect(build, cfg, sleep=sleep, clock=lambda: t[0])  # type: ignore[arg-type]


def test_the_final_line_is_a_sentence_not_a_dataclass_dump() -> None:
    stats = NodeStats(rounds_trained=3, uploads_accepted=2, uploads_refused=1, retries=4, refusals=["round_closed"])
    line = stats.summary()
    assert "NodeStats(" not in line
    assert line == "trained 3 rounds, 2 updates accepted, 1 refused (round_closed), 4 retries"
