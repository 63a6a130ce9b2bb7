"""Reputation: a device flagged or refused in several rounds is quarantined, listed with its reason, restorable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qflare.config import AggregationConfig, ReputationConfig
from qflare.fl.serialize import dump_arrays
from tests.server.conftest import ADMIN, Harness, make_harness

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _round(h: Harness, scales: dict[str, float]) -> int:
    rid = h.open_round()
    for device, scale in scales.items():
        h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob(scale=scale))
    h.clock.advance(61)
    h.poll_all()
    h.state.orchestrator.tick()
    return rid


def test_a_device_flagged_in_two_rounds_is_quarantined_listed_and_restored(tmp_path: Path) -> None:
    # Prepare: bounded FedAvg flags a clipped step; two strikes within five rounds quarantine
    for h in make_harness(tmp_path, aggregation=AggregationConfig(rule="bounded-fedavg"), total=5, min_devices=2):
        h.state.config = h.state.config.model_copy(update={"reputation": ReputationConfig(threshold=2, window=5)})
        h.state.orchestrator.reputation.config = ReputationConfig(threshold=2, window=5)
        honest = {"edge_0": 1.01, "edge_1": 1.02}

        # Execute: edge_2 sends a 50x step in two rounds
        first = _round(h, {**honest, "edge_2": 50.0})
        assert h.state.repo.get_device("edge_2").status == "active"  # type: ignore[union-attr]
        second = _round(h, {**honest, "edge_2": 50.0})

        # Assert: quarantined after the second round, not selected in the third, reason listed
        assert h.state.repo.get_device("edge_2").status == "quarantined"  # type: ignore[union-attr]
        third = h.open_round()
        rnd = h.state.repo.get_round(third)
        assert rnd is not None and "edge_2" not in rnd.selected and set(rnd.selected) == set(honest)
        listed = {d["device_id"]: d for d in h.client.get("/v1/admin/devices", headers=AUTH).json()}
        reason = listed["edge_2"]["quarantine_reason"]
        assert listed["edge_2"]["status"] == "quarantined" and f"({first}, {second})" in reason
        assert "flagged by bounded-fedavg" in reason and listed["edge_0"]["quarantine_reason"] is None
        kinds = [e.kind for e in h.state.repo.list_events() if e.device_id == "edge_2"]
        assert kinds.count("reputation_strike") == 2 and "device_quarantined" in kinds

        # Restore: active again, selectable, strikes forgiven; a second restore is a 409
        r = h.client.post("/v1/admin/devices/edge_2/restore", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "active"
        assert h.client.post("/v1/admin/devices/edge_2/restore", headers=AUTH).status_code == 409
        assert h.client.post("/v1/admin/devices/nobody/restore", headers=AUTH).status_code == 404
        assert h.state.orchestrator.reputation.strike_rounds("edge_2", current_round=third) == set()


def test_refused_updates_count_as_strikes(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, total=5, min_devices=2):
        h.state.orchestrator.reputation.config = ReputationConfig(threshold=2, window=5)
        bad = {k: np.full_like(v, np.nan) for k, v in h.global_arrays().items()}
        blob = dump_arrays(bad, {"num_examples": "10"})
        for _ in range(2):
            rid = h.open_round()
            assert h.post("edge_2", f"/v1/device/rounds/{rid}/update", blob).status_code >= 400
            for d in ("edge_0", "edge_1"):
                h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob())
            h.clock.advance(61)
            h.poll_all()
            h.state.orchestrator.tick()
        assert h.state.repo.get_device("edge_2").status == "quarantined"  # type: ignore[union-attr]
        assert "refused" in (h.state.orchestrator.reputation.reason("edge_2") or "")


def test_a_quarantined_device_still_authenticates_and_waits(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, total=5, min_devices=2):
        assert h.state.orchestrator.reputation.quarantine("edge_2", "test")
        assert not h.state.orchestrator.reputation.quarantine("edge_2", "again")  # already quarantined
        assert h.post("edge_2", "/v1/device/heartbeat").status_code == 200
        rid = h.open_round()
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and "edge_2" not in rnd.selected


def test_rounds_go_on_when_quarantine_leaves_fewer_eligible_devices_than_min_devices(tmp_path: Path) -> None:
    # Found when tried: `qflare simulate` waits for every device (min_devices = clients); once the enclave's
    # verdicts quarantined an attacker, no round could ever open again ("waiting for 3 active devices").
    for h in make_harness(tmp_path, total=5, min_devices=3):
        # Prepare: one of the three devices quarantined after round 1
        rid = h.open_round()
        for d in ("edge_0", "edge_1"):
            assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
        assert h.state.orchestrator.reputation.quarantine("edge_2", "test")

        # Execute: round 1 closes at its deadline with its quorum, the devices poll
        h.clock.advance(61)
        h.poll_all()
        h.state.orchestrator.tick()
        h.state.orchestrator.tick()

        # Assert: round 2 opens with both (never the quarantined one); the wait reason names the eligible count
        rnd = h.state.orchestrator.current_round()
        assert rnd is not None and rnd.round_id == 2 and set(rnd.selected) == {"edge_0", "edge_1"}
        wait = h.post("edge_2", "/v1/device/task").json()
        assert wait["status"] == "wait"


def test_min_devices_still_waits_for_eligible_devices_that_are_not_yet_active(tmp_path: Path) -> None:
    # Prepare: three eligible devices, only two have polled
    for h in make_harness(tmp_path, total=5, min_devices=3):
        for d in ("edge_0", "edge_1"):
            h.post(d, "/v1/device/heartbeat")

        # Execute
        h.state.orchestrator.tick()

        # Assert: still waiting for the third eligible device, and the reason says so
        assert h.state.orchestrator.current_round() is None
        reason = h.post("edge_0", "/v1/device/task").json()["reason"]
        assert "waiting for 3 active devices" in reason and "(2 of 3 active)" in reason


def test_min_devices_waits_for_devices_not_yet_enrolled_but_not_for_revoked_ones(tmp_path: Path) -> None:
    from tests.server.conftest import _KEYS

    # Prepare: min_devices 3 with only two devices enrolled so far (a fleet still being enrolled)
    two = {"edge_0": _KEYS[0], "edge_1": _KEYS[1]}
    for h in make_harness(tmp_path, keys=two, min_devices=3):
        # Execute
        h.poll_all()
        h.state.orchestrator.tick()

        # Assert: still waiting for the third device, as before
        assert h.state.orchestrator.current_round() is None
        assert "(2 of 3 active)" in h.post("edge_0", "/v1/device/task").json()["reason"]

    # A revoked device is taken out like a quarantined one: the other two open the round
    (tmp_path / "revoked").mkdir()
    for h in make_harness(tmp_path / "revoked", min_devices=3):
        assert h.client.post("/v1/admin/devices/edge_2/revoke", headers=AUTH).status_code == 200
        for d in ("edge_0", "edge_1"):
            assert h.post(d, "/v1/device/heartbeat").status_code == 200
        h.state.orchestrator.tick()
        rnd = h.state.orchestrator.current_round()
        assert rnd is not None and set(rnd.selected) == {"edge_0", "edge_1"}
