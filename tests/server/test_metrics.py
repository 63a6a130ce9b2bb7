"""``GET /metrics``: operator only; rounds, durations, aggregation time, refusals by reason, requests, ledger."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from qflare.server.metrics import ServerMetrics
from tests.server.conftest import ADMIN, Harness


def _scrape(h: Harness) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = h.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_need_the_operator_token(harness: Harness) -> None:
    assert harness.client.get("/metrics").status_code == 401
    assert harness.client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401


def test_a_round_shows_in_the_metrics(harness: Harness) -> None:
    rid = harness.open_round()
    for device in harness.keys:
        assert harness.post(device, f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    m = _scrape(harness)
    assert _value(m, "qflare_rounds", status="aggregated") == 1
    assert _value(m, "qflare_round_duration_seconds_count") == 1
    assert _value(m, "qflare_aggregation_seconds_count") == 1 and _value(m, "qflare_aggregation_seconds_sum") > 0
    assert _value(m, "qflare_updates_accepted_total") == 3
    assert _value(m, "qflare_devices", status="active") == 3
    route = "/v1/device/rounds/{round_id}/update"
    assert _value(m, "qflare_http_requests_total", route=route, method="POST", status="200") == 3
    assert _value(m, "qflare_http_request_seconds_count", route=route) == 3
    assert _value(m, "qflare_ledger_entries") >= 1  # enrolments, the round, its updates


def test_refusals_are_counted_by_kind_and_precise_reason(harness: Harness) -> None:
    # A stale request from an enrolled device, and garbage from nobody.
    envelope, _ = harness.seal("edge_0", "/v1/device/heartbeat", now=harness.clock() - 10_000)
    assert harness.send("/v1/device/heartbeat", envelope).status_code == 401
    assert harness.client.post("/v1/device/heartbeat", content=b"not an envelope").status_code >= 400
    m = _scrape(harness)
    stale = [lab for lab, v in m.get("qflare_refusals_total", []) if v and lab["kind"] == "request_rejected"]
    reasons = {lab["reason"] for lab in stale}
    assert any("stale" in r for r in reasons), reasons
    assert len(reasons) >= 2, reasons
    text = harness.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert not re.search(r'device(_id)?="', text)  # labels never carry device ids


def test_enclave_and_qkd_wrappers_count_calls_latency_and_key_bits(harness: Harness) -> None:
    metrics = ServerMetrics(harness.state)
    ok = metrics.observe_enclave(lambda make: ("result", make))
    assert ok("m") == ("result", "m")

    def failing(make: object) -> object:
        raise RuntimeError("enclave down")

    bad = metrics.observe_enclave(failing)
    try:
        bad("m")
    except RuntimeError:
        pass
    lookup = metrics.observe_qkd(lambda device, ids: b"k" * 32 * len(ids))
    assert lookup("edge_0", ("a", "b")) == b"k" * 64
    text = metrics.render().decode()
    assert 'qflare_enclave_calls_total{outcome="ok"} 1.0' in text
    assert 'qflare_enclave_calls_total{outcome="error"} 1.0' in text
    assert "qflare_enclave_call_seconds_count 2.0" in text
    assert "qflare_qkd_keys_total 2.0" in text and "qflare_qkd_key_bits_total 512.0" in text
