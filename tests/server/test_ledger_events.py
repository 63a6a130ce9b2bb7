"""Key-source refusals, QKD link failures and the enclave's quote are logged in the audit ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.crypto import SigningKey
from qflare.crypto.envelope import seal_request
from qflare.ledger import verify_log
from qflare.ledger.entries import LedgerEvent, decode_event

from .conftest import Harness, enroll, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _events(h: Harness) -> list[LedgerEvent]:
    ledger = h.state.ledger
    assert ledger is not None
    return [decode_event(e) for e in ledger.store.read_entries(0, ledger.store.size())]


def test_a_refused_key_source_is_logged_with_the_device(harness: Harness) -> None:
    # Prepare: a device enrolled for QKD that sends an ML-KEM-only request
    key = SigningKey.generate()
    enroll(harness.client, "edge_q", key, key_source="qkd")
    harness.keys["edge_q"] = key

    # Execute
    r = harness.post("edge_q", "/v1/device/heartbeat")

    # Assert
    assert r.status_code == 403
    refused = [e for e in _events(harness) if e.EVENT == "key_source_refused"]
    assert [(e.key_source, e.reason, e.device_id) for e in refused] == [  # type: ignore[attr-defined]
        ("mlkem", "key_source_not_allowed", "edge_q")]


def test_a_qkd_key_the_server_cannot_get_logs_the_link_failure(harness: Harness) -> None:
    # Prepare: a hybrid device naming QKD key IDs; this server has no QKD link
    key = SigningKey.generate()
    enroll(harness.client, "edge_h", key, key_source="hybrid")
    envelope, opener = seal_request(key, harness.server_pub, device_id="edge_h", method="POST",
                                    path="/v1/device/heartbeat", round_id=None, payload=b"", now=harness.clock(),
                                    key_source="hybrid", qkd_key=b"\x01" * 32, key_ids=("key-1",))

    # Execute
    r = harness.send("/v1/device/heartbeat", envelope, opener)

    # Assert
    assert r.status_code == 503
    events = _events(harness)
    aborted = [e for e in events if e.EVENT == "qkd_link_aborted"]
    refused = [e for e in events if e.EVENT == "key_source_refused"]
    assert [(e.link_id, e.reason, e.qber) for e in aborted] == [  # type: ignore[attr-defined]
        ("edge_h->server", "qkd_not_configured", None)]
    assert [(e.key_source, e.device_id) for e in refused] == [("hybrid", "edge_h")]  # type: ignore[attr-defined]
    ledger = harness.state.ledger
    assert ledger is not None and ledger.checkpoint() is not None
    assert verify_log(ledger.store, ledger.log_key).ok


def test_the_enclave_quote_is_logged_at_start_and_once_per_enclave_identity(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, enclave=True):
        first = _events(h)
        quotes = [e for e in first if e.EVENT == "enclave_quote_published"]
        assert len(quotes) == 1
        ident = h.state.enclave.identity()  # type: ignore[union-attr]
        assert quotes[0].measurement == ident.measurement.hex()  # type: ignore[attr-defined]
        # Devices attesting the same enclave do not add entries.
        assert h.client.get("/v1/enclave/attestation", params={"nonce": "ab" * 16}).status_code == 200
        assert [e for e in _events(h) if e.EVENT == "enclave_quote_published"] == quotes


def test_without_an_enclave_the_server_signs_update_and_aggregate_entries_with_the_log_key(harness: Harness) -> None:
    from qflare.crypto.keyfile import read_public_key
    from qflare.ledger.entries import SIGNED_EVENTS, verify_entry
    from qflare.server.ledger import LOG_KEY_FILE

    # Prepare
    rid = harness.open_round()

    # Execute
    for d in ("edge_0", "edge_1", "edge_2"):
        assert harness.post(d, f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200

    # Assert: four signed entries (three updates, one aggregate), under the published log key
    ledger = harness.state.ledger
    assert ledger is not None
    pinned = read_public_key(Path(harness.state.config.server.key_dir) / LOG_KEY_FILE)
    signed = [e for e in _events(harness) if isinstance(e, SIGNED_EVENTS)]
    assert [e.EVENT for e in signed] == ["update_accepted"] * 3 + ["aggregate_published"]
    for e in signed:
        verify_entry(e, pinned)
    report = verify_log(ledger.store, ledger.log_key, origin=ledger.origin, entry_key=pinned)
    assert report.ok and report.signed_entries == 4
