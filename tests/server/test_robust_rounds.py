"""Robust rules on the deployed path: too few updates fail the round, the next round recovers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.config import AggregationConfig
from qflare.fl.serialize import load_arrays
from tests.server.conftest import Harness, make_harness


def _upload(h: Harness, rid: int, device: str, **kw: float):  # type: ignore[no-untyped-def]
    return h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("enclave", [False, True], ids=["in-process", "enclave"])
def test_too_few_updates_fail_the_round_and_the_next_round_aggregates(tmp_path: Path, enclave: bool) -> None:
    # Prepare: Multi-Krum with f=0 needs 2f + 3 = 3 updates; quorum is 2
    agg = AggregationConfig(rule="multi-krum", params={"f": 0, "m": 1})
    for h in make_harness(tmp_path, enclave=enclave, aggregation=agg):
        rid = h.open_round()
        assert _upload(h, rid, "edge_0").status_code == 200
        assert _upload(h, rid, "edge_1").status_code == 200

        # Execute: the deadline closes the round with 2 updates
        h.clock.advance(61)
        h.poll_all()
        h.state.orchestrator.tick()

        # Assert: a clear failure, the model unchanged, and the next round aggregates with 3
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "failed" and rnd.close_reason == "too_few_updates"
        nxt = h.state.orchestrator.current_round()
        assert nxt is not None and nxt.round_id == rid + 1 and nxt.base_version == 0
        for device, scale in (("edge_0", 1.0), ("edge_1", 1.1), ("edge_2", 50.0)):
            assert _upload(h, nxt.round_id, device, scale=scale).status_code == 200
        done = h.state.repo.get_round(nxt.round_id)
        assert done is not None and done.status == "aggregated", done
        new, _ = load_arrays(h.state.repo.model_blob(done.new_version), h.state.orchestrator.spec)
        base = h.global_arrays()
        scaled = [s for s in (1.0, 1.1)
                  if all(np.allclose(new[k], v * s, rtol=1e-5, atol=1e-6) for k, v in base.items())]
        assert scaled, "Multi-Krum (m=1) picked one of the two close updates, not the x50 one"


@pytest.mark.parametrize("enclave", [False, True], ids=["in-process", "enclave"])
def test_bounded_fedavg_on_the_deployed_path_bounds_an_inflated_claim(tmp_path: Path, enclave: bool) -> None:
    # Prepare: the shipped default rule
    for h in make_harness(tmp_path, enclave=enclave, aggregation=AggregationConfig(rule="bounded-fedavg")):
        rid = h.open_round()
        base = h.global_arrays()

        # Execute: two peers claim 100, one claims 10^7 with a 1000x step
        assert _upload(h, rid, "edge_0", num_examples=100, scale=1.0).status_code == 200
        assert _upload(h, rid, "edge_1", num_examples=100, scale=1.0).status_code == 200
        assert _upload(h, rid, "edge_2", num_examples=10_000_000, scale=1000.0).status_code == 200

        # Assert: the honest steps are zero (scale 1), so the median step norm is 0 and the attacker's
        # step is clipped away entirely
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        new, _ = load_arrays(h.state.repo.model_blob(rnd.new_version), h.state.orchestrator.spec)
        for name, arr in base.items():
            np.testing.assert_allclose(new[name], arr, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("enclave", [False, True], ids=["in-process", "enclave"])
def test_fltrust_on_the_deployed_path_trains_its_root_update_and_ignores_a_flipped_inflated_step(
    tmp_path: Path, enclave: bool
) -> None:
    from qflare.fl.root import TaskRoot
    from qflare.fl.serialize import dump_arrays

    # Prepare: FLTrust with the digits root data set, in the server process or inside the enclave
    agg = AggregationConfig(rule="fltrust", params={"root_task": "digits", "root_examples": 100})
    for h in make_harness(tmp_path, enclave=enclave, aggregation=agg):
        rid = h.open_round()
        base = h.global_arrays()
        root = TaskRoot("digits", examples=100).update(base, h.state.orchestrator.spec)  # what the aggregator trains
        g0 = {k: root[k] - base[k] for k in base}

        blobs = {
            device: dump_arrays({k: (base[k] + scale * g0[k]).astype(base[k].dtype) for k in base},
                                {"num_examples": str(n), "train_loss": "0.5"})
            for device, scale, n in (("edge_0", 1.0, 10), ("edge_1", 3.0, 10), ("edge_2", -1000.0, 10_000_000))
        }

        # Execute: two devices step along the root step (one 3x longer), one sends the flipped step x 1000
        # claiming 10^7 examples
        for device, data in blobs.items():
            assert h.post(device, f"/v1/device/rounds/{rid}/update", data).status_code == 200  # type: ignore[arg-type]

        # Assert: both agreeing steps are rescaled to |g0| and the flipped one counts for nothing: the new
        # model is the root model, whichever process trained it
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated", rnd
        new, _ = load_arrays(h.state.repo.model_blob(rnd.new_version), h.state.orchestrator.spec)
        for name in base:
            np.testing.assert_allclose(new[name], root[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("enclave", [False, True], ids=["in-process", "enclave"])
def test_fltrust_with_another_task_s_root_data_fails_the_round_with_its_reason(tmp_path: Path, enclave: bool) -> None:
    # Prepare: the federation trains digits, but the root data set is the traffic task's (another model)
    agg = AggregationConfig(rule="fltrust", params={"root_task": "traffic"})
    for h in make_harness(tmp_path, enclave=enclave, aggregation=agg):
        rid = h.open_round()

        # Execute
        for device in ("edge_0", "edge_1", "edge_2"):
            assert _upload(h, rid, device, scale=1.1).status_code == 200

        # Assert: a clear round failure naming the reason; the global model is unchanged
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "failed", rnd
        assert rnd.close_reason == "root_spec_mismatch", rnd.close_reason
        nxt = h.state.orchestrator.current_round()
        assert nxt is None or nxt.base_version == 0


def test_an_update_claiming_more_examples_than_its_enrollment_allows_is_refused(tmp_path: Path) -> None:
    import json

    from qflare.crypto import SigningKey
    from qflare.crypto.keyfile import serialize_public_key

    from .conftest import ADMIN

    for h in make_harness(tmp_path):
        # Prepare: edge_3 enrolled for at most 50 examples per update
        key = SigningKey.generate()
        r = h.client.post("/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"}, json={
            "device_id": "edge_3", "public_key": serialize_public_key(key.public_key()).decode(),
            "max_examples": 50})
        assert r.status_code == 201 and r.json()["max_examples"] == 50
        h.keys["edge_3"] = key
        rid = h.open_round()
        before = h.snapshot()

        # Execute
        refused = h.post("edge_3", f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=10**7))

        # Assert: a sealed 400 with the reason, nothing changed; a claim at the cap is accepted
        assert refused.status_code == 400 and json.loads(refused.text)["error"]["reason"] == "num_examples_above_cap"
        assert h.snapshot() == before
        assert h.post("edge_3", f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=50)).status_code == 200
        bad = h.client.post("/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"}, json={
            "device_id": "edge_4", "public_key": serialize_public_key(key.public_key()).decode(), "max_examples": 0})
        assert bad.status_code == 422


@pytest.mark.parametrize("enclave", [False, True], ids=["in-process", "enclave"])
def test_the_rules_verdicts_reach_reputation_from_the_enclave_too(tmp_path: Path, enclave: bool) -> None:
    from qflare.config import ReputationConfig

    # Prepare: the default rule; two strikes quarantine. Behind the enclave the host saw no verdict before.
    for h in make_harness(tmp_path, enclave=enclave, aggregation=AggregationConfig(rule="bounded-fedavg"), total=5):
        h.state.orchestrator.reputation.config = ReputationConfig(threshold=2, window=5)
        rounds = []

        # Execute: in two rounds edge_2 sends the honest step sign-flipped (scale 0.9 where peers send 1.1, 1.12),
        # at an ordinary norm: never clipped, only opposed
        for _ in range(2):
            rid = h.open_round()
            base = h.state.repo.get_round(rid).base_version  # type: ignore[union-attr]
            for device, scale in (("edge_0", 1.1), ("edge_1", 1.12), ("edge_2", 0.9)):
                assert _upload(h, rid, device, scale=scale, version=base).status_code == 200
            rnd = h.state.repo.get_round(rid)
            assert rnd is not None and rnd.status == "aggregated"
            rounds.append(rid)
            # the flagged step is left out of the round's aggregate: the mean of 1.1 and 1.12, not 1.04 with it
            new, start = h.global_arrays(rnd.new_version), h.global_arrays(base)
            for name, arr in start.items():
                np.testing.assert_allclose(new[name], arr * 1.11, rtol=1e-5, atol=1e-6)

        # Assert: quarantined for the rule's verdicts, by that rule's name; the honest devices untouched
        assert h.state.repo.get_device("edge_2").status == "quarantined"  # type: ignore[union-attr]
        reason = h.state.orchestrator.reputation.reason("edge_2") or ""
        assert "flagged by bounded-fedavg" in reason and f"({rounds[0]}, {rounds[1]})" in reason
        for d in ("edge_0", "edge_1"):
            assert h.state.repo.get_device(d).status == "active"  # type: ignore[union-attr]
            assert h.state.orchestrator.reputation.strike_rounds(d, current_round=rounds[1]) == set()
