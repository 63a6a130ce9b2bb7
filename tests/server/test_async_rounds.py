"""rounds.mode async over HTTP (FedBuff): a model every `buffer` updates, staleness checked and weighted,
every bad input refused with its reason and nothing else changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from qflare.config import RoundsConfig
from qflare.fl.serialize import load_arrays
from tests.server.conftest import Harness, make_harness


@pytest.fixture
def fedbuff(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path, mode="async", buffer=2, max_staleness=1, total=5)


def _upload(h: Harness, rid: int, device: str, base: int | str | None, **kw: float):  # type: ignore[no-untyped-def]
    query = "" if base is None else f"?base_version={base}"
    known = isinstance(base, int) and h.state.repo.get_model(base) is not None
    return h.post(device, f"/v1/device/rounds/{rid}/update{query}",
                  h.update_blob(version=int(base) if known else 0, **kw))  # type: ignore[arg-type]


def _reason(reply) -> str:  # type: ignore[no-untyped-def]
    return str(json.loads(reply.raw)["error"]["reason"])


def _publish(h: Harness, rid: int, base: int, devices: tuple[str, str] = ("edge_0", "edge_1")) -> int:
    """Fill buffer ``rid`` with fresh updates; returns the next buffer's id."""
    for d in devices:
        assert _upload(h, rid, d, base).status_code == 200
    nxt = h.state.orchestrator.current_round()
    assert nxt is not None and nxt.round_id != rid
    return nxt.round_id


def test_task_says_async_and_every_device_may_train(fedbuff: Harness) -> None:
    rid = fedbuff.open_round()
    task = fedbuff.post("edge_2", "/v1/device/task").json()
    assert task["status"] == "train" and task["round_id"] == rid and task["mode"] == "async"
    assert task["max_staleness"] == 1 and task["staleness_exponent"] == 0.5


def test_a_model_is_published_every_buffer_updates(fedbuff: Harness) -> None:
    rid = fedbuff.open_round()
    assert _upload(fedbuff, rid, "edge_0", 0).status_code == 200
    assert fedbuff.state.repo.get_round(rid).status == "open"  # type: ignore[union-attr]
    assert _upload(fedbuff, rid, "edge_1", 0).status_code == 200
    rnd = fedbuff.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.close_reason == "buffer_full"
    assert rnd.new_version == 1
    nxt = fedbuff.state.orchestrator.current_round()
    assert nxt is not None and nxt.base_version == 1
    assert fedbuff.post("edge_2", "/v1/device/task").json()["model_version"] == 1


def test_a_stale_update_within_max_staleness_is_accepted_and_its_staleness_recorded(fedbuff: Harness) -> None:
    rid = fedbuff.open_round()
    rid2 = _publish(fedbuff, rid, 0)
    # edge_2 trained on version 0 and rebased its step onto version 1 (what the edge node does).
    assert _upload(fedbuff, rid2, "edge_2", 0).status_code == 200
    events = [e for e in fedbuff.state.repo.list_events() if e.kind == "update_accepted" and e.round_id == rid2]
    assert any("base_version=0 staleness=1" in (e.detail or "") for e in events)
    assert _upload(fedbuff, rid2, "edge_0", 1).status_code == 200
    rnd = fedbuff.state.repo.get_round(rid2)
    assert rnd is not None and rnd.status == "aggregated" and rnd.metrics is not None
    assert rnd.metrics["staleness_mean"] == 0.5 and rnd.metrics["staleness_max"] == 1


def test_an_update_older_than_max_staleness_is_refused_and_changes_nothing(fedbuff: Harness) -> None:
    rid = fedbuff.open_round()
    rid3 = _publish(fedbuff, _publish(fedbuff, rid, 0), 1)  # now at version 2
    before = fedbuff.snapshot()
    reply = _upload(fedbuff, rid3, "edge_2", 0)
    assert reply.status_code == 422 and _reason(reply) == "too_stale"
    assert "2 versions behind version 2" in json.loads(reply.raw)["error"]["message"]
    assert fedbuff.snapshot() == before
    refused = [e for e in fedbuff.state.repo.list_events() if e.kind == "update_rejected"]
    assert refused[-1].reason == "too_stale" and refused[-1].device_id == "edge_2"
    assert _upload(fedbuff, rid3, "edge_2", 1).status_code == 200  # the same device, within the window


@pytest.mark.parametrize(("base", "status", "reason"), [
    (7, 404, "unknown_model_version"),  # never existed
    (1, 404, "unknown_model_version"),  # the buffer being filled will publish version 1: it does not exist yet
    ("-1", 400, "bad_base_version"),
    ("1e3", 400, "bad_base_version"),
    (None, 400, "base_version_required"),
])
def test_an_update_for_a_model_version_that_never_existed_is_refused(
    fedbuff: Harness, base: int | str | None, status: int, reason: str
) -> None:
    rid = fedbuff.open_round()
    before = fedbuff.snapshot()
    reply = _upload(fedbuff, rid, "edge_0", base)
    assert reply.status_code == status and reply.sealed and _reason(reply) == reason
    assert fedbuff.snapshot() == before
    assert _upload(fedbuff, rid, "edge_0", 0).status_code == 200


def test_a_forged_base_version_breaks_the_signature(fedbuff: Harness) -> None:
    """The base version is in the signed target: an on-path rewrite of it is refused before anything is read."""
    rid = fedbuff.open_round()
    path = f"/v1/device/rounds/{rid}/update?base_version=0"
    envelope, opener = fedbuff.seal("edge_0", path, fedbuff.update_blob(), round_id=rid)
    before = fedbuff.snapshot()
    reply = fedbuff.send(path.replace("=0", "=1"), envelope, opener)
    assert reply.status_code == 403 and not reply.sealed and _reason(reply) == "path_mismatch"
    assert fedbuff.snapshot() == before


def test_staleness_weighted_step_lands_in_the_published_model(fedbuff: Harness) -> None:
    """The buffer is the FedAvg of the (rebased) updates: a stale step the device scaled by
    (1 + s) ** -a enters the model scaled, a fresh one at full weight."""
    rid = fedbuff.open_round()
    rid2 = _publish(fedbuff, rid, 0)
    v1 = fedbuff.global_arrays(1)
    step = {k: np.full_like(a, 0.01) for k, a in v1.items()}
    weight = (1 + 1) ** -0.5
    from qflare.fl.serialize import dump_arrays

    stale = dump_arrays({k: v1[k] + weight * step[k] for k in v1}, {"num_examples": "10"})
    fresh = dump_arrays({k: v1[k] + step[k] for k in v1}, {"num_examples": "10"})
    assert fedbuff.post("edge_2", f"/v1/device/rounds/{rid2}/update?base_version=0", stale).status_code == 200
    assert fedbuff.post("edge_0", f"/v1/device/rounds/{rid2}/update?base_version=1", fresh).status_code == 200
    v2, _ = load_arrays(fedbuff.state.repo.model_blob(2), fedbuff.state.orchestrator.spec)
    for k in v1:
        np.testing.assert_allclose(v2[k], v1[k] + 0.01 * (1 + weight) / 2, rtol=1e-5, atol=1e-6)


def test_sync_rounds_refuse_an_upload_naming_another_base_version(harness: Harness) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    reply = harness.post("edge_0", f"/v1/device/rounds/{rid}/update?base_version=3", harness.update_blob())
    assert reply.status_code == 400 and _reason(reply) == "base_version_mismatch"
    assert harness.snapshot() == before
    assert harness.post("edge_0", f"/v1/device/rounds/{rid}/update?base_version=0",
                        harness.update_blob()).status_code == 200


def test_a_buffer_larger_than_the_devices_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="buffer_exceeds_devices"):
        RoundsConfig(mode="async", buffer=4, min_devices=3, min_quorum=2)
    RoundsConfig(mode="async", buffer=3, min_devices=3, min_quorum=2)
    RoundsConfig(mode="sync", buffer=40, min_devices=3, min_quorum=2)  # the buffer is an async setting


def test_async_buffers_through_the_enclave(tmp_path: Path) -> None:
    """With the simulated enclave: its accumulator per buffer on the buffer's base model (the model chain
    it checks), a rebased stale update counted, too_stale refused before the enclave sees it."""
    for h in make_harness(tmp_path, enclave=True, mode="async", buffer=2, max_staleness=1, total=5):
        rid = h.open_round()
        rid2 = _publish(h, rid, 0)
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.close_reason == "buffer_full"
        assert h.state.repo.get_model(1).signature  # type: ignore[union-attr]  # signed by the enclave
        assert _upload(h, rid2, "edge_2", 0).status_code == 200
        assert _upload(h, rid2, "edge_0", 1).status_code == 200
        rid3 = h.state.orchestrator.current_round().round_id  # type: ignore[union-attr]
        before = h.snapshot()
        reply = _upload(h, rid3, "edge_1", 0)
        assert reply.status_code == 422 and _reason(reply) == "too_stale"
        assert h.snapshot() == before


def test_central_dp_is_refused_with_async_rounds(tmp_path: Path) -> None:
    from qflare.config import AggregationConfig, PrivacyConfig
    from tests.server.conftest import config_for

    cfg = config_for(tmp_path, mode="async", buffer=2)
    with pytest.raises(ValidationError, match="synchronous rounds only"):
        type(cfg).model_validate({**cfg.model_dump(), "aggregation": AggregationConfig(
            privacy=PrivacyConfig(mode="central", noise_multiplier=1.0)).model_dump()})


def test_an_upload_racing_its_buffers_close_is_told_round_closed_not_an_enclave_refusal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload read its buffer as open, then the buffer filled and closed before the upload reached the
    enclave (in the 50-device HTTP run, 14 of 1,000 uploads). The device must hear ``round_closed``, which makes
    it rebase onto the next buffer; the enclave, asked to re-begin the closed buffer on a base it no longer
    signs, answered 403 ``base_model_not_signed`` and the device dropped its update."""
    for h in make_harness(tmp_path, enclave=True, mode="async", buffer=2, max_staleness=1, total=5):
        # Prepare: edge_2's upload for buffer rid looks the buffer up while it is still open ...
        rid = h.open_round()
        assert _upload(h, rid, "edge_0", 0).status_code == 200
        as_read = h.state.repo.get_round(rid)
        assert as_read is not None and as_read.status == "open"
        # ... and edge_1's update closes it (version 1 published) before edge_2's upload goes on.
        assert _upload(h, rid, "edge_1", 0).status_code == 200
        stale = [as_read]

        def get_round(round_id: int, real=h.state.repo.get_round, rid=rid, stale=stale):  # type: ignore[no-untyped-def]
            return stale.pop() if round_id == rid and stale else real(round_id)

        monkeypatch.setattr(h.state.repo, "get_round", get_round)
        before = h.snapshot()

        # Execute
        reply = _upload(h, rid, "edge_2", 0)

        # Assert: a late update to the device, nothing else changed, the next buffer still takes updates
        assert not stale  # the upload did read the stale record
        assert reply.status_code == 409 and _reason(reply) == "round_closed"
        assert h.snapshot() == before
        rid2 = h.state.orchestrator.current_round().round_id  # type: ignore[union-attr]
        assert _upload(h, rid2, "edge_2", 0).status_code == 200
