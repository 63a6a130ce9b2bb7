"""A lone device below ``rounds.min_devices`` is told what it waits for (it used to wait in silence)."""

from __future__ import annotations

from tests.server.conftest import Harness


def test_a_lone_device_is_told_how_many_devices_the_round_waits_for(harness: Harness) -> None:
    harness.post("edge_0", "/v1/device/heartbeat")
    harness.state.orchestrator.tick()
    task = harness.post("edge_0", "/v1/device/task").json()
    assert task["status"] == "wait"
    assert task["reason"] == "waiting for 3 active devices before round 1 opens (1 of 3 active)"


def test_a_device_that_uploaded_is_told_it_waits_for_the_round_to_close(harness: Harness) -> None:
    rid = harness.open_round()
    assert harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    task = harness.post("edge_0", "/v1/device/task").json()
    assert task["status"] == "wait"
    assert task["reason"] == f"update for round {rid} received; waiting for the round to close"
