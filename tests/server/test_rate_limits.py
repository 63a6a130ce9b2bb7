"""Issue 12: per-source rate limits on operator-token guessing and self-enrollment answer 429 with Retry-After."""

from __future__ import annotations

import pytest

from qflare.config import RateLimitConfig
from qflare.errors import RateLimited
from qflare.server.ratelimit import TokenBucketLimiter, build_rate_limits
from tests.server.conftest import ADMIN, Harness


def test_bucket_refills_at_its_rate() -> None:
    t = [0.0]
    lim = TokenBucketLimiter(2.0, 3, name="x", clock=lambda: t[0])
    for _ in range(3):
        lim.take("a")
    with pytest.raises(RateLimited) as info:
        lim.take("a")
    assert info.value.reason == "rate_limited_x" and info.value.retry_after == pytest.approx(0.5)
    lim.take("b")  # another key has its own bucket
    t[0] += 0.5
    lim.take("a")


def test_bucket_memory_is_bounded() -> None:
    lim = TokenBucketLimiter(1.0, 1, name="x", clock=lambda: 0.0, max_keys=100)
    for i in range(1000):
        lim.take(f"k{i}")
    assert len(lim._buckets) == 100


def test_wrong_operator_tokens_are_limited_per_source(harness: Harness) -> None:
    # Execute: the default burst of wrong tokens (10), then one more.
    codes = [harness.client.get("/v1/admin/status", headers={"Authorization": f"Bearer wrong-{i:020d}"}).status_code
             for i in range(11)]
    # Assert: each refused guess recorded, the ones cut off by the limit not.
    assert codes == [401] * 10 + [429]
    events = harness.state.repo.list_events(kind="request_rejected")
    assert sum(e.reason == "operator_auth" for e in events) == 10
    r = harness.client.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["reason"] == "rate_limited_operator_auth"


def test_correct_operator_requests_are_not_limited(harness: Harness) -> None:
    for _ in range(50):
        assert harness.client.get("/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_enrollment_attempts_are_limited_per_source(harness: Harness) -> None:
    body = {"device_id": "guess", "public_key": "x", "token": "guess-0000000000000000", "signature": "AA=="}
    codes = [harness.client.post("/v1/enroll", json=body).status_code for _ in range(21)]
    assert 429 not in codes[:20] and codes[20] == 429


def test_a_source_flooding_refused_device_requests_is_cut_off_and_stops_adding_events(harness: Harness) -> None:
    # Prepare: a burst of 20 refused requests, refilled slowly (the default is 200 at 20/s).
    harness.client.app.state.rate_limits = build_rate_limits(  # type: ignore[attr-defined]
        RateLimitConfig(device_refusals_per_second=0.01, device_refusals_burst=20))
    events_before = harness.state.repo.count_events("request_rejected")
    # Execute: garbage envelopes.
    codes = [harness.client.post("/v1/device/heartbeat", content=b"garbage").status_code for _ in range(25)]
    # Assert: 400s, then 429 with Retry-After; the event rows stop growing with the 429s.
    assert codes[:20] == [400] * 20 and codes[20:] == [429] * 5
    r = harness.client.post("/v1/device/heartbeat", content=b"garbage")
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert harness.state.repo.count_events("request_rejected") - events_before == 20


def test_each_authenticated_device_has_its_own_request_budget(harness: Harness) -> None:
    # Prepare: 3 requests per device, refilled slowly
    harness.client.app.state.rate_limits = build_rate_limits(  # type: ignore[attr-defined]
        RateLimitConfig(device_requests_per_second=0.01, device_requests_burst=3))
    events_before = harness.state.repo.count_events("request_rejected")

    # Execute: edge_0 sends 5 heartbeats; an impostor claiming edge_1's id sends 5 (refused unopened)
    codes = [harness.post("edge_0", "/v1/device/heartbeat").status_code for _ in range(5)]
    from qflare.crypto import SigningKey

    impostor = SigningKey.generate()
    forged = [harness.post("edge_1", "/v1/device/heartbeat", key=impostor).status_code for _ in range(5)]
    edge_1 = harness.post("edge_1", "/v1/device/heartbeat")

    # Assert: edge_0 is cut off with 429 + Retry-After; the impostor could not spend edge_1's budget
    assert codes == [200, 200, 200, 429, 429]
    r = harness.post("edge_0", "/v1/device/heartbeat")
    assert r.status_code == 429 and "rate_limited_device_requests" in r.text
    assert forged == [401] * 5 and edge_1.status_code == 200
    assert harness.state.repo.count_events("request_rejected") - events_before == 3 + 5  # bounded, with reasons
