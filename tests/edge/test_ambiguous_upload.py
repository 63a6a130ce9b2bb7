"""Issue 12: an update durably accepted can be answered 503 (the enclave died while sealing the answer).
The device re-sends it (a fresh envelope); ``duplicate_update`` to that re-send means "accepted"
(docs/protocol.md, section 13.3)."""

from __future__ import annotations

from typing import Any

import pytest

from qflare.edge.client import ServerUnavailable
from qflare.edge.node import EdgeNode
from qflare.errors import DuplicateUpdate
from tests.edge.test_client import _cfg


class _Server:
    """Says train once, then done; the first upload is accepted but answered 503."""

    enclave = None
    attestation_required = False

    def __init__(self, first_answer: Exception | None) -> None:
        self.tasks = [{"status": "train", "round_id": 1}, {"status": "done", "retry_after": 0}]
        self.first_answer = first_answer
        self.uploads: list[bytes] = []

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        return self.tasks.pop(0)

    def upload_update(self, round_id: int, blob: bytes) -> dict[str, Any]:
        self.uploads.append(blob)
        if len(self.uploads) == 1 and self.first_answer is not None:
            raise self.first_answer
        if len(self.uploads) >= 2:
            raise DuplicateUpdate(f"device edge_01 already sent an update for round {round_id}")
        return {"round_id": round_id, "device_id": "edge_01", "sha256": "x", "num_examples": 1}


def _node(server: _Server, monkeypatch: pytest.MonkeyPatch) -> EdgeNode:
    node = EdgeNode(_cfg(), server, sleep=lambda s: None)  # type: ignore[arg-type]
    monkeypatch.setattr(node, "train_round", lambda task: b"the-update")
    return node


def test_duplicate_after_a_503_counts_as_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    server = _Server(ServerUnavailable("server answered 503: enclave unavailable", reason="enclave_unavailable"))
    node = _node(server, monkeypatch)
    # Execute
    stats = node.run()
    # Assert: the same update re-sent once, and the duplicate read as acceptance.
    assert server.uploads == [b"the-update", b"the-update"]
    assert stats.uploads_accepted == 1 and stats.uploads_refused == 0 and stats.rounds_trained == 1


def test_duplicate_without_an_unanswered_attempt_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _Server(DuplicateUpdate("already sent"))
    node = _node(server, monkeypatch)
    stats = node.run()
    assert server.uploads == [b"the-update"]
    assert stats.uploads_accepted == 0 and stats.refusals == ["duplicate_update"]


def test_a_429_is_retried_like_a_5xx() -> None:
    import httpx

    from qflare.edge.client import error_from_response

    resp = httpx.Response(429, headers={"Retry-After": "3"},
                          json={"error": {"reason": "rate_limited_device_refusals", "message": "slow down"}})
    err = error_from_response(resp)
    assert isinstance(err, ServerUnavailable) and err.reason == "rate_limited_device_refusals"
