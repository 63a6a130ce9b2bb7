"""The post-quantum request protocol at the HTTP boundary: every attack the issue names is refused
with a 4xx and a reason code, changes no state, and the server keeps serving."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qflare.crypto import SigningKey, XWingPrivateKey
from qflare.crypto.envelope import seal_request
from qflare.crypto.keyfile import serialize_public_key
from qflare.crypto.testing import UnsafeDeterministicRandomness
from qflare.server.enrollment import sign_enrollment
from tests.crypto.test_envelope import _layout
from tests.server.conftest import ADMIN, OUTSIDER_KEY, Harness, enroll, make_harness

TASK = "/v1/device/task"
OPERATOR = {"Authorization": f"Bearer {ADMIN}"}


def _reason(reply) -> str:  # type: ignore[no-untyped-def]
    return str(json.loads(reply.raw)["error"]["reason"])


def _state(h: Harness) -> tuple[object, ...]:
    return h.snapshot(), h.state.repo.count_nonces()


def _refused(h: Harness, envelope: bytes, path: str, status: int | set[int], reason: str | None = None) -> str:
    before = _state(h)
    reply = h.send(path, envelope)
    statuses = {status} if isinstance(status, int) else status
    assert reply.status_code in statuses, reply.text
    got = _reason(reply)
    if reason is not None:
        assert got == reason
    assert _state(h) == before
    return got


def _still_serving(h: Harness) -> None:
    assert h.post("edge_0", TASK).status_code == 200


def test_a_good_request_is_accepted_and_its_nonce_recorded(harness: Harness) -> None:
    reply = harness.post("edge_0", TASK)
    assert reply.status_code == 200 and reply.json()["status"] == "wait"
    assert harness.state.repo.count_nonces() == 1


def test_byte_identical_replay_is_refused(harness: Harness) -> None:
    envelope, opener = harness.seal("edge_0", TASK)
    assert harness.send(TASK, envelope, opener).status_code == 200
    _refused(harness, envelope, TASK, 409, "replay")
    _still_serving(harness)


def test_fresh_timestamp_with_an_old_nonce_is_refused(harness: Harness) -> None:
    # The same deterministic seed gives the same nonce; the timestamp (signed) is a minute later.
    with pytest.warns(UserWarning), UnsafeDeterministicRandomness(b"nonce-reuse"):
        first, opener = harness.seal("edge_0", TASK)
    with pytest.warns(UserWarning), UnsafeDeterministicRandomness(b"nonce-reuse"):
        second, _ = harness.seal("edge_0", TASK, now=harness.clock() + 60)
    assert first != second and first[:4] == second[:4]
    assert harness.send(TASK, first, opener).status_code == 200
    harness.clock.advance(60)
    _refused(harness, second, TASK, 409, "replay")


@pytest.mark.parametrize("field", sorted(
    ["header_len", "magic", "version", "suite", "key_source", "timestamp", "nonce_len", "nonce", "device_id",
     "method", "path", "round_id", "key_ids", "kem_ct_len", "kem_ct", "body_len", "body", "sig_len", "sig"]))
def test_a_flipped_bit_in_any_field_is_refused(harness: Harness, field: str) -> None:
    path = "/v1/device/rounds/1/update"  # an integer round id, as the field layout expects
    envelope, _ = harness.seal("edge_0", path, b"payload-bytes-to-protect", round_id=1)
    positions = list(_layout(envelope)[field])
    for pos in sorted({positions[0], positions[len(positions) // 2], positions[-1]}):
        for bit in (0, 7):
            tampered = bytearray(envelope)
            tampered[pos] ^= 1 << bit
            _refused(harness, bytes(tampered), path, {400, 401, 403})
    _still_serving(harness)


def test_timestamp_outside_the_window_is_refused(harness: Harness) -> None:
    window = harness.state.config.server.timestamp_window_seconds
    old, _ = harness.seal("edge_0", TASK, now=harness.clock() - window - 1)
    _refused(harness, old, TASK, 401, "stale_timestamp")
    future, _ = harness.seal("edge_0", TASK, now=harness.clock() + window + 1)
    _refused(harness, future, TASK, 401, "future_timestamp")
    inside, opener = harness.seal("edge_0", TASK, now=harness.clock() - window + 1)
    assert harness.send(TASK, inside, opener).status_code == 200


def test_kem_ciphertext_for_another_server_key_is_refused(harness: Harness) -> None:
    other = XWingPrivateKey.generate().public_key()
    envelope, _ = seal_request(harness.keys["edge_0"], other, device_id="edge_0", method="POST", path=TASK,
                               round_id=None, payload=b"", now=harness.clock())
    before = harness.snapshot()
    reply = harness.send(TASK, envelope)
    assert reply.status_code == 401 and _reason(reply) == "decryption_failed"
    assert harness.snapshot() == before


def test_request_for_another_path_or_round_than_signed_is_refused(harness: Harness) -> None:
    rid = harness.open_round()
    blob = harness.update_blob()
    signed_for_task, _ = harness.seal("edge_0", TASK)
    _refused(harness, signed_for_task, "/v1/device/heartbeat", 403, "path_mismatch")
    other_round, _ = harness.seal("edge_0", f"/v1/device/rounds/{rid + 1}/update", blob, round_id=rid + 1)
    _refused(harness, other_round, f"/v1/device/rounds/{rid}/update", 403, "path_mismatch")
    wrong_round_field, _ = harness.seal("edge_0", f"/v1/device/rounds/{rid}/update", blob, round_id=rid + 1)
    _refused(harness, wrong_round_field, f"/v1/device/rounds/{rid}/update", 403, "round_mismatch")


def test_lowered_or_raised_version_is_refused(harness: Harness) -> None:
    envelope, _ = harness.seal("edge_0", TASK)
    for version in (0, 2):
        patched = envelope[:8] + struct.pack(">H", version) + envelope[10:]
        _refused(harness, patched, TASK, 400, "unsupported_version")


def test_truncated_and_oversized_envelopes_are_refused(harness: Harness) -> None:
    envelope, _ = harness.seal("edge_0", TASK)
    for cut in (0, 3, 10, len(envelope) // 2, len(envelope) - 1):
        _refused(harness, envelope[:cut], TASK, 400)
    _refused(harness, envelope + b"\0", TASK, 400, "malformed_envelope")
    big, _ = harness.seal("edge_0", TASK, b"x" * harness.state.config.server.max_request_bytes)
    _refused(harness, big, TASK, 413, "payload_too_large")


def test_unknown_revoked_and_outsider_devices_are_refused(harness: Harness) -> None:
    unknown, _ = harness.seal("edge_9", TASK, key=OUTSIDER_KEY)
    _refused(harness, unknown, TASK, 401, "unauthenticated")
    impersonation, _ = harness.seal("edge_0", TASK, key=OUTSIDER_KEY)
    _refused(harness, impersonation, TASK, 401, "unauthenticated")
    assert harness.client.post("/v1/admin/devices/edge_1/revoke", headers=OPERATOR).status_code == 200
    revoked_forged, _ = harness.seal("edge_1", TASK, key=OUTSIDER_KEY)
    _refused(harness, revoked_forged, TASK, 401, "unauthenticated")
    revoked, _ = harness.seal("edge_1", TASK)  # signed by the device itself: it may learn it is revoked
    _refused(harness, revoked, TASK, 403, "device_revoked")
    # The server's own record keeps the precise cause the caller was not told.
    causes = [e.reason for e in reversed(harness.state.repo.list_events(kind="request_rejected"))]
    assert causes == ["unknown_device", "bad_signature", "bad_signature", "device_revoked"]
    _still_serving(harness)


def test_unauthenticated_callers_get_one_answer_and_the_same_work_whatever_the_cause(harness: Harness) -> None:
    # Prepare: an unknown device, an impersonation of an enrolled one, and an impersonation of a revoked one.
    assert harness.client.post("/v1/admin/devices/edge_1/revoke", headers=OPERATOR).status_code == 200
    calls: list[str] = []
    import qflare.server.gateway as gw

    real = gw.verify_envelope_signature

    def counting(env, key):  # type: ignore[no-untyped-def]
        calls.append(env.device_id)
        return real(env, key)

    gw.verify_envelope_signature = counting  # type: ignore[assignment]
    try:
        bodies = []
        for device in ("edge_9", "edge_0", "edge_1"):
            envelope, _ = harness.seal(device, TASK, key=OUTSIDER_KEY)
            bodies.append(harness.send(TASK, envelope).raw)
    finally:
        gw.verify_envelope_signature = real  # type: ignore[assignment]

    # Assert: byte-identical answers, and one signature verification each (a dummy key for the unknown one).
    assert len(set(bodies)) == 1 and b"unauthenticated" in bodies[0]
    assert calls == ["edge_9", "edge_0", "edge_1"]


def test_key_source_downgrade_is_refused(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, keys={}, min_devices=1, min_quorum=1):
        key = SigningKey.generate()
        enroll(h.client, "qkd_dev", key, key_source="hybrid")
        plain, _ = h.seal("qkd_dev", TASK, key=key)  # mlkem only: a downgrade from hybrid
        _refused(h, plain, TASK, 403, "key_source_not_allowed")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=6000))
def test_random_bytes_never_crash_the_server(harness: Harness, data: bytes) -> None:
    before = _state(harness)
    reply = harness.send(TASK, data)
    assert 400 <= reply.status_code < 500
    assert _state(harness) == before


def test_every_refusal_is_recorded_with_its_reason(harness: Harness) -> None:
    envelope, opener = harness.seal("edge_0", TASK)
    harness.send(TASK, envelope, opener)
    harness.send(TASK, envelope)
    harness.send(TASK, b"junk")
    reasons = sorted(e.reason or "" for e in harness.state.repo.list_events(kind="request_rejected"))
    assert reasons == ["malformed_envelope", "replay"]


# -- enrollment ----------------------------------------------------------------------------------


def _token(h: Harness, **body: object) -> str:
    r = h.client.post("/v1/admin/enrollment-tokens", json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _join(h: Harness, device_id: str, key: SigningKey, token: str, signer: SigningKey | None = None):  # type: ignore[no-untyped-def]
    body = {"device_id": device_id, "public_key": serialize_public_key(key.public_key()).decode(), "token": token,
            "signature": sign_enrollment(signer or key, device_id, token)}
    return h.client.post("/v1/enroll", json=body)


def test_device_enrolls_itself_once_with_a_token_then_talks(harness: Harness) -> None:
    key = SigningKey.generate()
    token = _token(harness, device_id="edge_new")
    r = _join(harness, "edge_new", key, token)
    assert r.status_code == 201 and r.json()["status"] == "active"
    assert harness.post("edge_new", TASK, key=key).status_code == 200
    again = _join(harness, "edge_new2", SigningKey.generate(), token)
    assert again.status_code == 401 and again.json()["error"]["reason"] == "enrollment_token_used"


def test_enrollment_needs_proof_of_possession(harness: Harness) -> None:
    token = _token(harness)
    r = _join(harness, "edge_x", SigningKey.generate(), token, signer=OUTSIDER_KEY)
    assert r.status_code == 401 and r.json()["error"]["reason"] == "bad_signature"
    assert harness.state.repo.get_device("edge_x") is None
    assert _join(harness, "edge_x", SigningKey.generate(), token).status_code == 201  # token not consumed


def test_expired_or_unknown_token_and_bad_key_are_refused(harness: Harness) -> None:
    token = _token(harness, ttl_seconds=10)
    harness.clock.advance(11)
    r = _join(harness, "edge_y", SigningKey.generate(), token)
    assert r.status_code == 401 and r.json()["error"]["reason"] == "enrollment_token_expired"
    r = _join(harness, "edge_y", SigningKey.generate(), "z" * 43)
    assert r.status_code == 401 and r.json()["error"]["reason"] == "bad_enrollment_token"
    r = harness.client.post("/v1/admin/devices", json={"device_id": "edge_z", "public_key": "{}"}, headers=OPERATOR)
    assert r.status_code == 400 and r.json()["error"]["reason"] == "bad_public_key"
    assert harness.state.repo.get_device("edge_y") is None and harness.state.repo.get_device("edge_z") is None


# -- QKD key sources at the gateway --------------------------------------------------------------


def _hybrid_envelope(h: Harness, key: SigningKey) -> bytes:
    envelope, _ = seal_request(key, h.server_pub, device_id="qkd_dev", method="POST", path=TASK, round_id=None,
                               payload=b"", now=h.clock(), key_source="hybrid", qkd_key=b"k" * 32,
                               key_ids=("key-1",))
    return envelope


def test_qkd_request_to_a_server_without_a_kme_is_refused_not_downgraded(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, keys={}, min_devices=1, min_quorum=1):
        key = SigningKey.generate()
        enroll(h.client, "qkd_dev", key, key_source="hybrid")
        before = h.snapshot()
        reply = h.send(TASK, _hybrid_envelope(h, key))
        assert reply.status_code == 503 and _reason(reply) == "qkd_not_configured"
        assert h.snapshot() == before


def test_qkd_key_from_the_kme_must_match_the_devices(tmp_path: Path) -> None:
    from qflare.errors import QKDError

    for h in make_harness(tmp_path, keys={}, min_devices=1, min_quorum=1):
        key = SigningKey.generate()
        enroll(h.client, "qkd_dev", key, key_source="hybrid")
        asked: list[tuple[str, tuple[str, ...]]] = []

        def lookup(device_id: str, key_ids: tuple[str, ...], asked: list[tuple[str, tuple[str, ...]]] = asked) -> bytes:
            asked.append((device_id, key_ids))
            return b"k" * 32

        h.state.gateway.qkd_lookup = lookup
        envelope, opener = seal_request(key, h.server_pub, device_id="qkd_dev", method="POST", path=TASK,
                                        round_id=None, payload=b"", now=h.clock(), key_source="hybrid",
                                        qkd_key=b"k" * 32, key_ids=("key-1",))
        assert h.send(TASK, envelope, opener).status_code == 200
        assert asked == [("qkd_dev", ("key-1",))]

        h.state.gateway.qkd_lookup = lambda d, ids: b"x" * 32  # the KME hands out another key
        reply = h.send(TASK, _hybrid_envelope(h, key))
        assert reply.status_code == 401 and _reason(reply) == "decryption_failed"

        def out_of_key(d: str, ids: tuple[str, ...]) -> bytes:
            raise QKDError("no key", reason="out_of_key")

        h.state.gateway.qkd_lookup = out_of_key
        reply = h.send(TASK, _hybrid_envelope(h, key))
        assert reply.status_code == 503 and _reason(reply) == "out_of_key"


def test_a_device_credential_never_opens_an_operator_route(harness: Harness) -> None:
    # Prepare: a valid, signed device envelope sent to an operator route (with and without a bearer token).
    envelope, _ = harness.seal("edge_0", "/v1/admin/devices")
    headers = {"Content-Type": "application/vnd.qflare.envelope"}

    # Execute
    bare = harness.client.post("/v1/admin/devices", content=envelope, headers=headers)
    listing = harness.client.get("/v1/admin/devices", headers=headers)

    # Assert: 403 with its reason, nothing enrolled.
    for resp in (bare, listing):
        assert resp.status_code == 403 and resp.json()["error"]["reason"] == "device_credential_on_operator_route"
    assert len(harness.state.repo.list_devices()) == 3
