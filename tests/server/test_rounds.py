"""Round orchestration: selection, quorum, deadlines, stragglers, FedAvg result, resume after restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qflare.fl.serialize import dump_arrays, load_arrays
from tests.server.conftest import Harness, make_harness


def _upload(h: Harness, rid: int, device: str, **kw: float):  # type: ignore[no-untyped-def]
    return h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob(**kw))  # type: ignore[arg-type]


def test_no_round_until_enough_devices_are_active(harness: Harness) -> None:
    harness.post("edge_0", "/v1/device/heartbeat")
    harness.state.orchestrator.tick()
    assert harness.state.orchestrator.current_round() is None
    task = harness.post("edge_0", "/v1/device/task").json()
    assert task["status"] == "wait"


def test_task_announces_round_model_and_training(harness: Harness) -> None:
    rid = harness.open_round()
    task = harness.post("edge_1", "/v1/device/task").json()
    model = harness.state.repo.get_model(0)
    assert task["status"] == "train" and task["round_id"] == rid
    assert task["model_version"] == 0 and task["model_sha256"] == model.sha256  # type: ignore[union-attr]
    assert task["train_config"]["epochs"] == 1
    blob = harness.post("edge_1", "/v1/device/model/0").content
    assert blob == harness.state.repo.model_blob(0)


def test_round_aggregates_weighted_fedavg_when_all_report(harness: Harness) -> None:
    rid = harness.open_round()
    base = harness.global_arrays()
    for device, n, scale in (("edge_0", 10, 1.0), ("edge_1", 30, 2.0), ("edge_2", 60, 0.0)):
        assert _upload(harness, rid, device, num_examples=n, scale=scale).status_code == 200
    rnd = harness.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.new_version == 1
    new, _ = load_arrays(harness.state.repo.model_blob(1), harness.state.orchestrator.spec)
    expected_scale = (10 * 1.0 + 30 * 2.0 + 60 * 0.0) / 100
    for name, arr in base.items():
        np.testing.assert_allclose(new[name], arr * expected_scale, rtol=1e-5, atol=1e-6)
    assert rnd.metrics is not None and 0.0 <= rnd.metrics["accuracy"] <= 1.0
    assert rnd.metrics["num_updates"] == 3 and rnd.metrics["total_examples"] == 100


def test_task_after_upload_is_wait_and_done_after_last_round(harness: Harness) -> None:
    for _ in range(2):
        rid = harness.open_round()
        assert _upload(harness, rid, "edge_0").status_code == 200
        assert harness.post("edge_0", "/v1/device/task").json()["status"] == "wait"
        for d in ("edge_1", "edge_2"):
            assert _upload(harness, rid, d).status_code == 200
    assert harness.post("edge_0", "/v1/device/task").json()["status"] == "done"
    assert harness.state.orchestrator.finished()


def test_deadline_with_quorum_aggregates_and_straggler_gets_409(harness: Harness) -> None:
    rid = harness.open_round()
    assert _upload(harness, rid, "edge_0").status_code == 200
    assert _upload(harness, rid, "edge_1").status_code == 200
    harness.clock.advance(61)
    harness.state.orchestrator.tick()
    rnd = harness.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.close_reason == "deadline"
    late = _upload(harness, rid, "edge_2")
    assert late.status_code == 409 and json.loads(late.raw)["error"]["reason"] == "round_closed"


def test_deadline_without_quorum_fails_round_and_next_round_reuses_model(harness: Harness) -> None:
    rid = harness.open_round()
    assert _upload(harness, rid, "edge_0").status_code == 200
    harness.clock.advance(61)
    harness.poll_all()
    harness.state.orchestrator.tick()
    rnd = harness.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "failed" and rnd.close_reason == "deadline_no_quorum"
    nxt = harness.state.orchestrator.current_round()
    assert nxt is not None and nxt.round_id == rid + 1 and nxt.base_version == 0


def test_close_on_quorum_closes_early(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, close_on_quorum=True):
        rid = h.open_round()
        assert _upload(h, rid, "edge_0").status_code == 200
        assert _upload(h, rid, "edge_1").status_code == 200
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated" and rnd.close_reason == "quorum"


def test_fraction_samples_a_subset_and_unselected_devices_wait(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, fraction=0.5, min_quorum=1):
        rid = h.open_round()
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and len(rnd.selected) == 2
        outsider = next(d for d in h.keys if d not in rnd.selected)
        assert h.post(outsider, "/v1/device/task").json()["status"] == "wait"
        resp = _upload(h, rid, outsider)
        assert resp.status_code == 403 and json.loads(resp.raw)["error"]["reason"] == "not_selected"


def test_restart_mid_round_resumes_with_no_accepted_update_lost(tmp_path: Path) -> None:
    # Prepare: a round with two of three updates accepted, then the server object is dropped.
    gen = make_harness(tmp_path)
    h = next(gen)
    rid = h.open_round()
    for device, scale in (("edge_0", 1.0), ("edge_1", 3.0)):
        assert _upload(h, rid, device, num_examples=10, scale=scale).status_code == 200
    base = h.global_arrays()
    gen.close()

    # Execute: a new server on the same database and key directory.
    gen2 = make_harness(tmp_path, h.keys, enroll_devices=False)
    h2 = next(gen2)
    assert h2.state.orchestrator._counts[rid] == 2
    assert _upload(h2, rid, "edge_0").status_code == 409
    blob = dump_arrays({k: v * 5.0 for k, v in base.items()}, {"num_examples": "20"})
    resp = h2.post("edge_2", f"/v1/device/rounds/{rid}/update", blob)
    assert resp.status_code == 200, resp.text

    # Assert: the aggregate includes both updates accepted before the restart.
    rnd = h2.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.metrics["num_updates"] == 3  # type: ignore[index]
    new, _ = load_arrays(h2.state.repo.model_blob(1), h2.state.orchestrator.spec)
    for name, arr in base.items():
        np.testing.assert_allclose(new[name], arr * (10 * 1 + 10 * 3 + 20 * 5) / 40, rtol=1e-5, atol=1e-6)
    gen2.close()
