"""The device client and node loop without a server (httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from qflare import errors as e
from qflare.config import DeviceConfig, RetryConfig
from qflare.crypto import SigningKey, XWingPrivateKey
from qflare.crypto.envelope import decrypt_envelope, parse_envelope, seal_request, verify_envelope_signature
from qflare.edge.client import DeviceClient, ServerUnavailable
from qflare.edge.node import EdgeNode, GaveUp
from qflare.fl.serialize import sha256_hex

SERVER_KEY = XWingPrivateKey.generate()
DEVICE_KEY = SigningKey.generate()


def _client(handler) -> DeviceClient:  # type: ignore[no-untyped-def]
    return DeviceClient("http://test", "edge_01", DEVICE_KEY, SERVER_KEY.public_key(),
                        transport=httpx.MockTransport(handler))


def _sealed(answer: bytes):  # type: ignore[no-untyped-def]
    """A mock server that checks each envelope like the real one and seals ``answer``."""
    seen: list[tuple[str, bytes]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        env = parse_envelope(req.content, max_size=1 << 20)
        verify_envelope_signature(env, DEVICE_KEY.public_key())
        payload, sealer = decrypt_envelope(env, SERVER_KEY, allowed_key_sources=("mlkem",))
        assert env.path == req.url.raw_path.decode() and env.device_id == "edge_01"
        seen.append((env.path, payload))
        return httpx.Response(200, content=sealer.seal(answer))

    return handler, seen


def test_requests_are_sealed_signed_and_bound_to_their_path() -> None:
    handler, seen = _sealed(b'{"device_id": "edge_01", "server_time": 1.0}')
    assert _client(handler).heartbeat()["device_id"] == "edge_01"
    client = _client(handler)
    client.upload_update(7, b"update-bytes")
    assert seen[-1] == ("/v1/device/rounds/7/update", b"update-bytes")


def test_a_response_sealed_for_another_request_is_refused() -> None:
    handler, _ = _sealed(b"{}")
    stash: list[httpx.Response] = []

    def replaying(req: httpx.Request) -> httpx.Response:
        if not stash:
            stash.append(handler(req))
        return stash[0]

    client = _client(replaying)
    client.heartbeat()
    with pytest.raises(e.QFlareError):
        client.heartbeat()


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
    handler, _ = _sealed(b"model-bytes")
    client = _client(handler)
    assert client.download_model(1, sha256_hex(b"model-bytes")) == b"model-bytes"
    with pytest.raises(e.InvalidInput) as info:
        client.download_model(1, "0" * 64)
    assert info.value.reason == "model_hash"


def test_unsealed_or_non_json_answers_are_refused() -> None:
    with pytest.raises(e.QFlareError):
        _client(lambda req: httpx.Response(200, content=b"<html>")).task()
    handler, _ = _sealed(b"<html>")
    with pytest.raises(e.MalformedPayload):
        _client(handler).task()


def _cfg(**kw: object) -> DeviceConfig:
    return DeviceConfig(device_id="edge_01", identity_key_file="k", server_key_fingerprint="x", **kw)  # type: ignore[arg-type]


def test_node_backs_off_while_the_server_is_away_then_stops_when_done() -> None:
    done, _ = _sealed(b'{"status": "done", "retry_after": 0}')
    answers: list[object] = [httpx.ConnectError("down")] * 3 + [done]

    def handler(req: httpx.Request) -> httpx.Response:
        nxt = answers.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt(req)  # type: ignore[operator]

    sleeps: list[float] = []
    cfg = _cfg(retry=RetryConfig(initial_seconds=1.0, max_seconds=3.0))
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

    cfg = _cfg(retry=RetryConfig(initial_seconds=1, max_seconds=2, give_up_after_seconds=10))
    node = EdgeNode(cfg, _client(handler), sleep=sleep, clock=lambda: t[0])
    with pytest.raises(GaveUp):
        node.run()


def test_node_stops_on_revocation_after_its_retry_budget_since_a_plain_refusal_is_only_a_hint() -> None:
    # Prepare: an unsealed 403 device_revoked (anyone on the path could have written it).
    body = json.dumps({"error": {"reason": "device_revoked", "message": "revoked"}})
    t = [0.0]

    def sleep(s: float) -> None:
        t[0] += s

    cfg = _cfg(retry=RetryConfig(initial_seconds=1, max_seconds=2, give_up_after_seconds=10))
    node = EdgeNode(cfg, _client(lambda req: httpx.Response(403, content=body)), sleep=sleep, clock=lambda: t[0])

    # Execute / Assert: it backs off and asks again, then gives up naming the reason.
    with pytest.raises(GaveUp) as info:
        node.run()
    assert info.value.reason == "device_revoked" and node.stats.retries >= 3


def test_a_sealed_refusal_is_authenticated_and_final() -> None:
    # Prepare: the server seals its refusal under the request's response key.
    def handler(req: httpx.Request) -> httpx.Response:
        env = parse_envelope(req.content, max_size=1 << 20)
        _, sealer = decrypt_envelope(env, SERVER_KEY, allowed_key_sources=("mlkem",))
        err = json.dumps({"error": {"reason": "not_selected", "message": "not selected"}}).encode()
        sealed = {"content-type": "application/vnd.qflare.response"}
        return httpx.Response(403, content=sealer.seal(err), headers=sealed)

    node = EdgeNode(_cfg(), _client(handler))

    # Execute / Assert: the refusal is marked authenticated and stops the node at once.
    with pytest.raises(e.PermissionDenied) as info:
        node.run()
    assert info.value.authenticated and info.value.reason == "not_selected" and node.stats.retries == 0


def test_a_forged_plain_refusal_is_marked_unauthenticated() -> None:
    body = json.dumps({"error": {"reason": "device_revoked", "message": "revoked"}})
    with pytest.raises(e.PermissionDenied) as info:
        _client(lambda req: httpx.Response(403, content=body)).task()
    assert not info.value.authenticated


def test_a_sealed_refusal_for_another_request_is_not_believed() -> None:
    other = SERVER_KEY.public_key()
    _, other_opener = seal_request(DEVICE_KEY, other, device_id="edge_01", method="POST", path="/x",
                                   round_id=None, payload=b"", now=0.0)

    def handler(req: httpx.Request) -> httpx.Response:
        # A sealed body made for some other request (e.g. replayed by an on-path attacker).
        env = parse_envelope(req.content, max_size=1 << 20)
        _, sealer = decrypt_envelope(env, SERVER_KEY, allowed_key_sources=("mlkem",))
        sealer.seal(b"{}")
        return httpx.Response(403, content=b"QFRS" + b"\x00" * 40,
                              headers={"content-type": "application/vnd.qflare.response"})

    with pytest.raises(e.QFlareError) as info:
        _client(handler).task()
    assert not info.value.authenticated and info.value.reason == "http_error"
    assert other_opener is not None
