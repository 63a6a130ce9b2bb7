"""Personalised FL over HTTP: a device's signed report of its held-out metrics, and the run's distribution."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import ADMIN, OUTSIDER_KEY, Harness


def _report(**kw: object) -> bytes:
    doc = {"method": "finetune", "metric": "accuracy", "global": 0.8, "personalized": 0.9, "num_examples": 30, **kw}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def _summary(h: Harness) -> dict:  # type: ignore[type-arg]
    r = h.client.get("/v1/admin/personalization", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_reports_give_mean_and_worst_decile_beside_the_global_metric(harness: Harness) -> None:
    for device, g, p in (("edge_0", 0.7, 0.9), ("edge_1", 0.8, 0.95), ("edge_2", 0.6, 0.5)):
        reply = harness.post(device, "/v1/device/metrics", _report(**{"global": g, "personalized": p}))
        assert reply.status_code == 200 and reply.json()["device_id"] == device
    harness.post("edge_2", "/v1/device/metrics", _report(personalized=0.85))  # the latest report counts
    s = _summary(harness)
    assert s["reports"] == 3 and s["personalize"] == ["finetune"] and s["metric"] == "accuracy"
    assert s["personalized_accuracy_mean"] == pytest.approx((0.9 + 0.95 + 0.85) / 3)
    assert s["personalized_accuracy_worst_decile"] == pytest.approx(0.86)  # 10th percentile of 0.85, 0.9, 0.95
    assert s["global_accuracy_mean"] == pytest.approx((0.7 + 0.8 + 0.8) / 3)
    assert [d["device_id"] for d in s["per_device"]] == ["edge_0", "edge_1", "edge_2"]


@pytest.mark.parametrize(("payload", "needle"), [
    (b"not json", "not JSON"),
    (_report(method="fedrep"), "method"),
    (_report(metric="mae"), "metric must be 'accuracy'"),
    (_report(personalized=float("nan")), "personalized must be a finite number"),
    (_report(personalized=1.5), "at most 1"),
    (_report(**{"global": -0.1}), "global must be"),
    (_report(**{"global": True}), "global must be"),
    (_report(num_examples=0), "num_examples"),
    (_report(num_examples=...), "exactly the keys"),
    (_report(device_id="edge_1"), "exactly the keys"),  # a report names no other device: the signer is the device
])
def test_a_bad_report_is_refused_and_nothing_is_recorded(harness: Harness, payload: bytes, needle: str) -> None:
    reply = harness.post("edge_0", "/v1/device/metrics", payload)
    assert reply.status_code == 400 and reply.sealed
    err = json.loads(reply.raw)["error"]
    assert err["reason"] == "bad_metrics_report" and needle in err["message"]
    assert _summary(harness)["reports"] == 0


def test_a_report_must_be_signed_by_an_enrolled_device(harness: Harness) -> None:
    # An outsider's key claiming edge_0, and a valid envelope whose payload was altered on the way.
    assert harness.post("edge_0", "/v1/device/metrics", _report(), key=OUTSIDER_KEY).status_code == 401
    envelope, opener = harness.seal("edge_1", "/v1/device/metrics", _report())
    tampered = envelope[:-40] + bytes(b ^ 1 for b in envelope[-40:])
    assert harness.send("/v1/device/metrics", tampered, opener).status_code in (400, 401)
    assert _summary(harness)["reports"] == 0


def test_done_names_the_final_model_for_personalisation(harness: Harness) -> None:
    for _ in range(2):
        rid = harness.open_round()
        for d in ("edge_0", "edge_1", "edge_2"):
            assert harness.post(d, f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    task = harness.post("edge_0", "/v1/device/task").json()
    final = harness.state.repo.latest_model()
    assert task["status"] == "done" and final is not None
    assert task["model_version"] == final.version == 2 and task["model_sha256"] == final.sha256
