"""Issue 12: inputs schemathesis found answered 500, and the OpenAPI description of the device routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.conftest import ADMIN, Harness, make_harness

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def enclave_harness(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from make_harness(tmp_path, enclave=True)


def test_attestation_nonce_with_odd_hex_digits_is_refused_not_500(enclave_harness: Harness) -> None:
    r = enclave_harness.client.get("/v1/enclave/attestation", params={"nonce": "a" * 33})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["reason"] == "invalid_request"
    ok = enclave_harness.client.get("/v1/enclave/attestation", params={"nonce": "ab" * 16})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("limit", ["-1", "0", "10001", "-9223372036854775809000", "99999999999999999999999"])
def test_events_limit_out_of_range_is_422(harness: Harness, limit: str) -> None:
    r = harness.client.get("/v1/admin/events", params={"limit": limit}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["reason"] == "invalid_request"


@pytest.mark.parametrize("path", ["/v1/admin/models/{n}/safetensors", "/v1/admin/rounds/{n}"])
@pytest.mark.parametrize("n", ["9223372036854775808", "-1", "99999999999999999999999"])
def test_a_model_version_or_round_id_beyond_64_bits_is_422_not_500(harness: Harness, path: str, n: str) -> None:
    # Found by schemathesis: GET /v1/admin/models/9223372036854775808/safetensors reached SQLite, OverflowError
    before = harness.snapshot()
    r = harness.client.get(path.format(n=n), headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["reason"] == "invalid_request"
    assert harness.client.get(path.format(n="9223372036854775807"), headers=AUTH).status_code == 404
    assert harness.snapshot() == before


def test_a_device_naming_a_model_version_beyond_64_bits_is_refused_not_500(harness: Harness) -> None:
    rid = harness.open_round()
    huge = "9223372036854775808"
    assert harness.post("edge_0", f"/v1/device/model/{huge}").status_code == 422
    assert harness.post("edge_0", f"/v1/device/rounds/{huge}/update", harness.update_blob(), round_id=rid
                        ).status_code == 422
    assert harness.post("edge_0", "/v1/device/model/0").status_code == 200


def test_events_limit_in_range(harness: Harness) -> None:
    for limit in ("1", "10000"):
        assert harness.client.get("/v1/admin/events", params={"limit": limit}, headers=AUTH).status_code == 200


def test_openapi_describes_envelope_bodies_and_error_responses(harness: Harness) -> None:
    spec = harness.client.get("/openapi.json").json()
    device_ops = [(p, op) for p, item in spec["paths"].items() if p.startswith("/v1/device/") for op in item.values()]
    assert sorted(p for p, _ in device_ops) == ["/v1/device/heartbeat", "/v1/device/metrics",
                                                "/v1/device/model/{version}", "/v1/device/rounds/{round_id}/update",
                                                "/v1/device/task"]
    for path, op in device_ops:
        body = op["requestBody"]["content"]["application/vnd.qflare.envelope"]["schema"]
        assert body == {"type": "string", "format": "binary"}, path
        assert "application/vnd.qflare.response" in op["responses"]["200"]["content"], path
    for path, item in spec["paths"].items():
        if not path.startswith(("/v1/", "/ledger/")):
            continue
        for op in item.values():
            for code in ("400", "401", "404", "422", "429", "503"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (path, code)
    assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})
