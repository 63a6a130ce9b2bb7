"""Issue 12, "Load": an edge node honours the server's Retry-After, and a server_busy answer (the upload
turned away unread, server/ingest.py) is waited out until the round's deadline without using an attempt."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from qflare.edge.client import MAX_RETRY_AFTER_SECONDS, ServerUnavailable, error_from_response, retry_after_of
from qflare.edge.node import EdgeNode
from tests.edge.test_client import _cfg


def _busy(retry_after: str = "7") -> ServerUnavailable:
    err = error_from_response(httpx.Response(503, headers={"Retry-After": retry_after}, json={
        "error": {"reason": "server_busy", "message": "the server is ingesting as many uploads as it can"}}))
    assert isinstance(err, ServerUnavailable)
    return err


class _Server:
    """Says train once (deadline ``deadline_in`` s ahead), then done; ``busy`` uploads are turned away first."""

    enclave = None
    attestation_required = False

    def __init__(self, busy: int, deadline_in: float) -> None:
        self.tasks = [{"status": "train", "round_id": 1, "deadline_at": time.time() + deadline_in},
                      {"status": "done", "retry_after": 0}]
        self.busy = busy
        self.uploads = 0

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        return self.tasks.pop(0)

    def upload_update(self, round_id: int, blob: bytes) -> dict[str, Any]:
        self.uploads += 1
        if self.uploads <= self.busy:
            raise _busy()
        return {"round_id": round_id, "device_id": "edge_01", "sha256": "x", "num_examples": 1}


def _node(server: _Server, monkeypatch: pytest.MonkeyPatch, slept: list[float]) -> EdgeNode:
    node = EdgeNode(_cfg(), server, sleep=slept.append)  # type: ignore[arg-type]
    monkeypatch.setattr(node, "train_round", lambda task: b"the-update")
    return node


def test_the_retry_after_of_a_busy_answer_is_read() -> None:
    err = _busy("7")
    assert err.busy and err.retry_after == 7.0
    assert retry_after_of(httpx.Response(503, headers={"Retry-After": "nan"})) is None
    assert retry_after_of(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None
    assert retry_after_of(httpx.Response(503, headers={"Retry-After": "99999"})) == MAX_RETRY_AFTER_SECONDS
    assert retry_after_of(httpx.Response(503)) is None


def test_busy_answers_are_waited_out_without_using_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: more busy answers than the node has attempts, a deadline far ahead
    slept: list[float] = []
    server = _Server(busy=EdgeNode.UPLOAD_ATTEMPTS + 3, deadline_in=3600)
    node = _node(server, monkeypatch, slept)
    # Execute
    stats = node.run()
    # Assert: one training, the same update re-sent until accepted, each wait at least the Retry-After
    assert server.uploads == EdgeNode.UPLOAD_ATTEMPTS + 4
    assert stats.uploads_accepted == 1 and stats.rounds_trained == 1
    waits = slept[: EdgeNode.UPLOAD_ATTEMPTS + 3]
    assert all(7.0 <= w <= 10.5 for w in waits), waits


def test_busy_answers_past_the_deadline_use_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the deadline comes before the Retry-After would end
    slept: list[float] = []
    server = _Server(busy=100, deadline_in=5)
    node = _node(server, monkeypatch, slept)
    # Execute: the upload gives up after its attempts; the node's loop backs off (and the next task is done)
    stats = node.run()
    # Assert
    assert server.uploads == EdgeNode.UPLOAD_ATTEMPTS
    assert stats.uploads_accepted == 0 and stats.retries >= EdgeNode.UPLOAD_ATTEMPTS
