"""Protocol edges an outside implementer hit: the signed request target, one-time KEM ciphertexts, what a
refused request may change, and which refusals are authenticated (``docs/protocol.md``)."""

from __future__ import annotations

import json
from unittest import mock

from qflare.crypto import XWingPrivateKey, XWingPublicKey
from qflare.crypto.envelope import seal_request
from tests.server.conftest import Harness

TASK = "/v1/device/task"


def _reason(reply) -> str:  # type: ignore[no-untyped-def]
    return str(json.loads(reply.raw)["error"]["reason"])


def test_the_signed_path_is_the_raw_request_target_with_its_query(harness: Harness) -> None:
    # Prepare: one request signed with a query string, one without.
    with_query, opener = harness.seal("edge_0", TASK + "?wait=1")
    without, _ = harness.seal("edge_0", TASK)

    # Execute
    accepted = harness.send(TASK + "?wait=1", with_query, opener)
    reposted = harness.send(TASK + "?x=1", without)

    # Assert: the target as signed is accepted; the same envelope under another query is refused.
    assert accepted.status_code == 200 and accepted.json()["status"] == "wait"
    assert reposted.status_code == 403 and _reason(reposted) == "path_mismatch"


def test_a_query_signed_but_not_sent_is_refused(harness: Harness) -> None:
    envelope, _ = harness.seal("edge_0", TASK + "?wait=1")
    before = harness.snapshot()
    reply = harness.send(TASK, envelope)
    assert reply.status_code == 403 and _reason(reply) == "path_mismatch"
    assert harness.snapshot() == before and harness.state.repo.count_nonces() == 0


def test_a_kem_ciphertext_is_accepted_once_even_under_a_fresh_nonce(harness: Harness) -> None:
    # Prepare: a device that reuses one encapsulation for two requests (each with its own nonce).
    pub = harness.server_pub
    fixed = pub.encapsulate()
    with mock.patch.object(XWingPublicKey, "encapsulate", lambda self: fixed):
        first, opener = harness.seal("edge_0", TASK)
        second, _ = harness.seal("edge_0", TASK)
    assert first[:40] != second[:40]  # different nonces

    # Execute
    ok = harness.send(TASK, first, opener)
    nonces_after_first = harness.state.repo.count_nonces()
    again = harness.send(TASK, second)

    # Assert: one request, one key: the second is refused and records nothing.
    assert ok.status_code == 200
    assert again.status_code == 409 and _reason(again) == "kem_ciphertext_reused"
    assert harness.state.repo.count_nonces() == nonces_after_first


def test_a_signed_request_that_fails_decryption_uses_up_only_its_nonce(harness: Harness) -> None:
    # Prepare: validly signed by edge_0, but encrypted to another server key.
    other = XWingPrivateKey.generate().public_key()
    envelope, _ = seal_request(harness.keys["edge_0"], other, device_id="edge_0", method="POST", path=TASK,
                               round_id=None, payload=b"", now=harness.clock())
    before = harness.snapshot()

    # Execute
    first = harness.send(TASK, envelope)
    second = harness.send(TASK, envelope)

    # Assert: refused; the documented exception: its nonce stays used (so no copy is ever decrypted twice),
    # nothing else changes.
    assert first.status_code == 401 and _reason(first) == "decryption_failed"
    assert second.status_code == 409 and _reason(second) == "replay"
    assert harness.snapshot() == before and harness.state.repo.count_nonces() == 1


def test_refusals_after_the_request_was_opened_are_sealed_and_gateway_refusals_are_plain(harness: Harness) -> None:
    rid = harness.open_round()
    harness.state.repo.revoke_device("edge_2", now=harness.clock())

    # Execute: a refusal by the route's work (a duplicate), and one by the gateway (revoked).
    assert harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    duplicate = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob())
    revoked = harness.post("edge_2", f"/v1/device/rounds/{rid}/update", harness.update_blob())

    # Assert
    assert duplicate.status_code == 409 and duplicate.sealed and _reason(duplicate) == "duplicate_update"
    assert revoked.status_code == 403 and not revoked.sealed and _reason(revoked) == "device_revoked"
