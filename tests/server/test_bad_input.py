"""Every bad input the foundation issue names: a clear 4xx with a reason code, and no other state change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qflare.fl.serialize import dump_arrays
from tests.server.conftest import ADMIN, OUTSIDER_KEY, Harness


def _reason(resp) -> str:
    if hasattr(resp, "raw"):
        return str(json.loads(resp.raw)["error"]["reason"])  # type: ignore[no-untyped-def]
    return str(resp.json()["error"]["reason"])


def _upload(h: Harness, round_id: int, blob: bytes, device: str = "edge_0"):  # type: ignore[no-untyped-def]
    return h.post(device, f"/v1/device/rounds/{round_id}/update", blob)


def _assert_refused(h: Harness, resp, status: int, reason: str, before: tuple[object, ...]) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    assert _reason(resp) == reason
    assert h.snapshot() == before


MALFORMED = [b"", b"not a tensor file", b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"]


@pytest.mark.parametrize("blob", MALFORMED)
def test_malformed_bytes_are_refused(harness: Harness, blob: bytes) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, blob), 400, "malformed_tensor", before)


def test_wrong_shape_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    arrays = harness.global_arrays()
    name = next(iter(arrays))
    arrays[name] = np.zeros((3, 3), dtype=np.float32)
    before = harness.snapshot()
    resp = _upload(harness, rid, dump_arrays(arrays, {"num_examples": "5"}))
    _assert_refused(harness, resp, 422, "shape_mismatch", before)
    assert name in json.loads(resp.raw)["error"]["message"]


def test_wrong_dtype_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    arrays = harness.global_arrays()
    name = next(iter(arrays))
    arrays[name] = arrays[name].astype(np.float64)
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, dump_arrays(arrays, {"num_examples": "5"})), 422,
                    "dtype_mismatch", before)


def test_missing_tensor_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    arrays = harness.global_arrays()
    arrays.pop(next(iter(arrays)))
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, dump_arrays(arrays, {"num_examples": "5"})), 422,
                    "missing_tensor", before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(harness: Harness, bad: float) -> None:
    rid = harness.open_round()
    arrays = harness.global_arrays()
    name = list(arrays)[-1]
    arrays[name].flat[0] = bad
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, dump_arrays(arrays, {"num_examples": "5"})), 422,
                    "non_finite", before)


def test_missing_num_examples_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    blob = dump_arrays(harness.global_arrays())
    _assert_refused(harness, _upload(harness, rid, blob), 400, "missing_num_examples", before)


def test_oversized_update_is_refused_with_content_length(harness: Harness) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    resp = _upload(harness, rid, b"\0" * (harness.state.config.server.max_update_bytes + 1))
    _assert_refused(harness, resp, 413, "payload_too_large", before)


def test_oversized_small_request_is_refused(harness: Harness) -> None:
    harness.open_round()
    before = harness.snapshot()
    resp = harness.post("edge_0", "/v1/device/task", b"x" * (harness.state.config.server.max_request_bytes + 1))
    _assert_refused(harness, resp, 413, "payload_too_large", before)


def test_oversized_update_is_refused_while_streaming(harness: Harness) -> None:
    """Without a Content-Length the limit is enforced chunk by chunk, before the body is all read."""
    rid = harness.open_round()
    limit = harness.state.config.server.max_update_bytes
    sent = 0

    def chunks():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(limit // 4096 * 4):  # four times the limit in total
            sent += 4096
            yield b"\0" * 4096

    before = harness.snapshot()
    resp = harness.client.post(f"/v1/device/rounds/{rid}/update", content=chunks())
    _assert_refused(harness, resp, 413, "payload_too_large", before)


def test_unknown_round_is_refused(harness: Harness) -> None:
    harness.open_round()
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, 999, harness.update_blob()), 404, "unknown_round", before)


def test_closed_round_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    for d in ("edge_0", "edge_1", "edge_2"):
        assert _upload(harness, rid, harness.update_blob(), d).status_code == 200
    assert harness.state.repo.get_round(rid).status == "aggregated"  # type: ignore[union-attr]
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, harness.update_blob()), 409, "round_closed", before)


def test_late_update_after_deadline_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    harness.clock.advance(61)
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, harness.update_blob()), 409, "deadline_passed", before)


def test_second_update_in_a_round_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    assert _upload(harness, rid, harness.update_blob()).status_code == 200
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, harness.update_blob(scale=2.0)), 409, "duplicate_update", before)


def test_unknown_device_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    resp = harness.post("edge_9", f"/v1/device/rounds/{rid}/update", harness.update_blob(), key=OUTSIDER_KEY)
    _assert_refused(harness, resp, 401, "unauthenticated", before)


def test_signature_by_another_enrolled_device_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    before = harness.snapshot()
    resp = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob(),
                        key=harness.keys["edge_1"])
    _assert_refused(harness, resp, 401, "unauthenticated", before)


def test_revoked_device_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    r = harness.client.post("/v1/admin/devices/edge_0/revoke", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    before = harness.snapshot()
    _assert_refused(harness, _upload(harness, rid, harness.update_blob()), 403, "device_revoked", before)


def test_malformed_json_to_the_operator_api_is_refused(harness: Harness) -> None:
    before = harness.snapshot()
    resp = harness.client.post("/v1/admin/devices", content=b"{not json",
                               headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    _assert_refused(harness, resp, 400, "malformed_json", before)


def test_invalid_device_id_is_refused(harness: Harness) -> None:
    before = harness.snapshot()
    resp = harness.client.post("/v1/admin/devices", json={"device_id": "../../etc"},
                               headers={"Authorization": f"Bearer {ADMIN}"})
    _assert_refused(harness, resp, 422, "invalid_request", before)


def test_operator_api_needs_the_operator_token(harness: Harness) -> None:
    resp = harness.client.get("/v1/admin/devices", headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401 and _reason(resp) == "operator_auth"


def test_every_refusal_is_recorded_with_its_reason(harness: Harness) -> None:
    rid = harness.open_round()
    _upload(harness, rid, b"junk")
    _upload(harness, 999, harness.update_blob())
    reasons = [e.reason for e in harness.state.repo.list_events(kind="update_rejected")]
    assert sorted(reasons) == ["malformed_tensor", "unknown_round"]


def test_server_keeps_serving_after_bad_input(harness: Harness) -> None:
    rid = harness.open_round()
    for blob in (b"", b"junk", b"\x00" * 1000):
        _upload(harness, rid, blob)
    assert _upload(harness, rid, harness.update_blob()).status_code == 200
    assert harness.state.repo.count_updates() == 1
