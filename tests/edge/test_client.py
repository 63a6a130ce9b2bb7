"""The device client and node loop without a server (httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from qflare import errors as e
from qflare.config import DeviceConfig, RetryConfig
from qflare.edge.client import DeviceClient, ServerUnavailable
from qflare.edge.node import EdgeNode, GaveUp
from qflare.fl.serialize import sha256_hex


def _client(handler) -> DeviceClient:  # type: ignore[no-untyped-def]
    return DeviceClient("http://test", "edge_01", "tok", transport=httpx.MockTransport(handler))


def test_requests_carry_identity_and_credential() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"device_id": "edge_01", "server_time": 1.0})

    _client(handler).heartbeat()
    assert seen[0].headers["X-QFLARE-Device"] == "edge_01"
    assert seen[0].headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, e.MalformedPayload), (401, e.AuthenticationError), (403, e.PermissionDenied), (404, e.NotFound),
     (409, e.Conflict), (413, e.PayloadTooLarge), (422, e.InvalidInput), (503, ServerUnavailable)],
)
def test_error_responses_become_typed_errors_with_the_server_reason(status: int, cls: type[e.QFlareError]) -> None:
    body = {"error": {"reason": "some_reason", "message": "why"}}
    client = _client(lambda req: httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        client.task()
    assert info.value.reason == "some_reason"


def test_transport_failure_is_server_unavailable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(ServerUnavailable):
        _client(handler).task()


def test_model_download_checks_the_announced_hash() -> None:
    client = _client(lambda req: httpx.Response(200, content=b"model-bytes"))
    assert client.download_model(1, sha256_hex(b"model-bytes")) == b"model-bytes"
    with pytest.raises(e.InvalidInput) as info:
        client.download_model(1, "0" * 64)
    assert info.value.reason == "model_hash"


def test_non_json_answer_is_malformed() -> None:
    with pytest.raises(e.MalformedPayload):
        _client(lambda req: httpx.Response(200, content=b"<html>")).task()


def test_node_backs_off_while_the_server_is_away_then_stops_when_done() -> None:
    answers = [httpx.ConnectError("down")] * 3 + [httpx.Response(200, json={"status": "done", "retry_after": 0})]

    def handler(req: httpx.Request) -> httpx.Response:
        nxt = answers.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    sleeps: list[float] = []
    cfg = DeviceConfig(device_id="edge_01", retry=RetryConfig(initial_seconds=1.0, max_seconds=3.0))
    node = EdgeNode(cfg, _client(handler), sleep=sleeps.append)
    stats = node.run()
    assert stats.retries == 3 and not answers
    assert len(sleeps) == 3 and sleeps[2] <= 3.0 * 1.5 and sleeps[0] >= 0.5


def test_node_gives_up_after_the_configured_time() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    t = [0.0]

    def sleep(s: float) -> None:
        t[0] += s

    cfg = DeviceConfig(device_id="edge_01", retry=RetryConfig(initial_seconds=1, max_seconds=2,
                                                              give_up_after_seconds=10))
    node = EdgeNode(cfg, _client(handler), sleep=sleep, clock=lambda: t[0])
    with pytest.raises(GaveUp):
        node.run()


def test_node_stops_on_revocation() -> None:
    body = json.dumps({"error": {"reason": "device_revoked", "message": "revoked"}})
    node = EdgeNode(DeviceConfig(device_id="edge_01"), _client(lambda req: httpx.Response(403, content=body)))
    with pytest.raises(e.PermissionDenied):
        node.run()
