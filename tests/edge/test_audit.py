"""Devices as auditors: a device keeps the last checkpoint it verified and refuses a rolled-back or forked log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qflare.config import DeviceConfig, DeviceLedgerConfig
from qflare.crypto.secret_access import TOKEN
from qflare.edge.audit import AuditBundle, HttpLedgerReader, LedgerAuditor, build_auditor
from qflare.edge.node import EdgeNode
from qflare.errors import ConfigError, LedgerIntegrityError
from qflare.ledger import HybridNoteSigner, MemoryLogStore, TransparencyLog
from qflare.server.keys import ServerKeys

from ..server.conftest import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _auditor(h: Harness, reader: Any = None, state_file: Path | None = None, **kwargs: Any) -> LedgerAuditor:
    ledger = h.state.ledger
    assert ledger is not None
    return LedgerAuditor(reader or HttpLedgerReader(h.client), origin=ledger.origin, log_key=ledger.log_key,
                         state_file=state_file, **kwargs)


def _round(h: Harness) -> list[dict[str, Any]]:
    """One round with all three devices; returns their upload receipts."""
    rid = h.open_round()
    receipts = []
    for i, d in enumerate(h.keys):
        r = h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=10 + i))
        assert r.status_code == 200, r.text
        receipts.append(json.loads(r.content))
    return receipts


class _Serving:
    """A log's read API that serves a chosen checkpoint note (a rolled-back or forked server)."""

    def __init__(self, real: HttpLedgerReader, note: bytes | None) -> None:
        self.real, self.note = real, note

    def checkpoint(self) -> bytes | None:
        return self.note

    def consistency(self, first: int, second: int) -> list[bytes]:
        return self.real.consistency(first, second)

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        return self.real.inclusion(leaf_hash, tree_size)


def test_receipts_name_the_entry_and_after_rounds_every_update_is_proven_included(harness: Harness,
                                                                                   tmp_path: Path) -> None:
    # Prepare
    state = tmp_path / "edge_0.ledger.json"
    auditor = _auditor(harness, state_file=state)
    assert auditor.check() is None  # no checkpoint yet: nothing to verify, nothing refused

    # Execute: two rounds; the device remembers every receipt and checks on each contact
    for _ in range(2):
        for receipt in _round(harness):
            assert isinstance(receipt["ledger_index"], int) and len(receipt["ledger_leaf_hash"]) == 64
            auditor.expect(receipt)
        cp = auditor.check()

    # Assert
    assert cp is not None and cp.size == harness.state.ledger.store.latest_checkpoint().size  # type: ignore[union-attr]
    assert auditor.verified_updates == 6 and auditor.pending == []
    # The state survives a restart (and is re-verified when loaded).
    again = _auditor(harness, state_file=state)
    assert again.verified == cp and again.verified_updates == 6
    assert again.check() == cp


def test_a_rolled_back_log_is_refused(harness: Harness) -> None:
    _round(harness)
    first = harness.state.ledger.store.read_checkpoints()[0].note  # type: ignore[union-attr]
    _round(harness)
    auditor = _auditor(harness)
    assert auditor.check() is not None and auditor.verified.size > 10  # type: ignore[union-attr]

    # A device that never saw the newer checkpoint cannot tell (that is what witnesses are for)...
    assert _auditor(harness, _Serving(HttpLedgerReader(harness.client), first)).check() is not None
    # ...the device that saw the newer checkpoint refuses the older one:
    auditor.reader = _Serving(HttpLedgerReader(harness.client), first)
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "checkpoint_rollback"
    assert "rolled back" in info.value.message
    auditor.reader = _Serving(HttpLedgerReader(harness.client), None)  # "no checkpoint" after one was seen
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "checkpoint_missing"


def _forged(h: Harness, size: int, *, prefix: int = 0) -> bytes:
    """A checkpoint signed with the log's real key over another tree (the first ``prefix`` entries shared)."""
    ledger = h.state.ledger
    assert ledger is not None
    signer = HybridNoteSigner(ledger.origin, ServerKeys.load_or_create(h.state.config.server.key_dir).signing, TOKEN)
    other = TransparencyLog(MemoryLogStore(), origin=ledger.origin, signer=signer)
    other.append(ledger.store.read_entries(0, prefix) + [b"forged %d" % i for i in range(size - prefix)])
    return other.checkpoint()


def test_a_fork_two_checkpoints_of_one_size_with_different_roots_is_detected(harness: Harness) -> None:
    _round(harness)
    auditor = _auditor(harness)
    cp = auditor.check()
    assert cp is not None

    # Same size, other root (the view shown to another device).
    auditor.reader = _Serving(HttpLedgerReader(harness.client), _forged(harness, cp.size))
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "checkpoint_fork" and "forked" in info.value.message


def test_a_larger_checkpoint_that_does_not_extend_the_verified_one_is_refused(harness: Harness) -> None:
    _round(harness)
    auditor = _auditor(harness)
    cp = auditor.check()
    assert cp is not None
    _round(harness)  # the real log grows, so the consistency proof endpoint answers for the bigger size
    size = harness.state.ledger.log.size()  # type: ignore[union-attr]
    auditor.reader = _Serving(HttpLedgerReader(harness.client), _forged(harness, size, prefix=cp.size - 1))
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "inconsistent_checkpoint"


def test_an_accepted_update_missing_from_the_log_is_refused(harness: Harness) -> None:
    receipts = _round(harness)
    auditor = _auditor(harness)
    # the server's receipt names a leaf the log does not hold (and, like an older server, no entry bytes)
    auditor.expect({**receipts[0], "ledger_leaf_hash": "ab" * 32, "ledger_entry": None})
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "update_not_logged"


def _entry_receipt(receipt: dict[str, Any], event: Any) -> dict[str, Any]:
    """``receipt`` with another entry (and its leaf hash), as a lying server would send it."""
    import base64

    from qflare.ledger.entries import encode_event
    from qflare.ledger.merkle import leaf_hash

    entry = encode_event(event)
    return {**receipt, "ledger_entry": base64.b64encode(entry).decode(), "ledger_leaf_hash": leaf_hash(entry).hex()}


def test_the_receipt_entry_names_this_update_and_is_signed_by_the_log_key(harness: Harness, tmp_path: Path) -> None:
    import base64
    import dataclasses

    from qflare.ledger.entries import UpdateAccepted, decode_event, sign_entry

    # Prepare
    receipts = _round(harness)
    auditor = _auditor(harness)
    mine = receipts[0]
    real = decode_event(base64.b64decode(mine["ledger_entry"]))
    assert isinstance(real, UpdateAccepted) and real.device_id == mine["device_id"]
    other_key = ServerKeys.load_or_create(tmp_path / "other-keys").signing
    lies = {
        # another device's acceptance, under the real key
        "receipt_entry_mismatch": _entry_receipt(
            mine, decode_event(base64.b64decode(receipts[1]["ledger_entry"]))),
        # the real entry with a changed time (its signature no longer covers it)
        "invalid_entry_signature": _entry_receipt(mine, dataclasses.replace(real, time_ms=real.time_ms + 1)),
        # an entry the host signed with its own key
        "invalid_entry_signature ": _entry_receipt(mine, sign_entry(dataclasses.replace(
            real, producer_signature=None), other_key)),
        "unsigned_entry": _entry_receipt(mine, dataclasses.replace(real, producer_signature=None)),
        "receipt_entry_malformed": {**mine, "ledger_entry": "not base64!"},
    }

    # Execute / Assert: each lie is refused with its reason, and nothing is remembered
    for reason, receipt in lies.items():
        with pytest.raises(LedgerIntegrityError) as info:
            auditor.expect(receipt, device_id=mine["device_id"], update_sha256=mine["sha256"])
        assert info.value.reason == reason.strip(), reason
        assert auditor.pending == []
    # The same receipt for another device, or for another update, is not this device's acceptance.
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.expect(mine, device_id="edge_9")
    assert info.value.reason == "receipt_entry_mismatch"
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.expect(mine, update_sha256="cd" * 32)
    assert info.value.reason == "receipt_entry_mismatch"
    # The true receipt passes.
    auditor.expect(mine, device_id=mine["device_id"], update_sha256=mine["sha256"])
    assert auditor.pending == [(mine["ledger_index"], bytes.fromhex(mine["ledger_leaf_hash"]))]


def test_a_checkpoint_signed_by_another_key_is_refused(harness: Harness, tmp_path: Path) -> None:
    _round(harness)
    other = ServerKeys.load_or_create(tmp_path / "other-keys").signing
    ledger = harness.state.ledger
    assert ledger is not None
    log = TransparencyLog(MemoryLogStore(), origin=ledger.origin, signer=HybridNoteSigner(ledger.origin, other, TOKEN))
    log.append([b"x"])
    auditor = _auditor(harness, _Serving(HttpLedgerReader(harness.client), log.checkpoint()))
    with pytest.raises(LedgerIntegrityError):
        auditor.check()


class _WaitingClient:
    """A device client whose server always says wait (the auditor runs after a task poll when a check is due)."""

    enclave = None
    attestation_required = False

    def __init__(self) -> None:
        self.polls = 0

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        self.polls += 1
        return {"status": "wait", "retry_after": 0.0}


class _RoundWaitingClient(_WaitingClient):
    """Its server says wait, naming the open round the device's update was accepted in (``None``: closed)."""

    def __init__(self, round_id: int | None) -> None:
        super().__init__()
        self.round_id = round_id

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        answer = super().task(wait)
        return answer if self.round_id is None else {**answer, "round_id": self.round_id}


class _Counting:
    """A log's read API that counts the requests the auditor makes."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, [0]

    def checkpoint(self) -> bytes | None:
        self.calls[0] += 1
        return self.real.checkpoint()  # type: ignore[no-any-return]

    def consistency(self, first: int, second: int) -> list[bytes]:
        self.calls[0] += 1
        return self.real.consistency(first, second)  # type: ignore[no-any-return]

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        self.calls[0] += 1
        return self.real.inclusion(leaf_hash, tree_size)  # type: ignore[no-any-return]


def test_a_device_audits_when_it_matters_and_a_quiet_contact_costs_no_request(harness: Harness) -> None:
    # Prepare: a device that verified the log once (its first contact is due)
    now = [0.0]
    reader = _Counting(HttpLedgerReader(harness.client))
    auditor = _auditor(harness, reader, clock=lambda: now[0], audit_interval_seconds=60.0)
    receipts = _round(harness)
    assert auditor.due()
    auditor.check()
    client = _WaitingClient()
    node = EdgeNode(DeviceConfig(device_id="edge_0", identity_key_file="k", server_key_fingerprint="x"),
                    client, sleep=lambda s: None, auditor=auditor)  # type: ignore[arg-type]
    before = reader.calls[0]

    # Execute / Assert: contacts with nothing due make no ledger request, even while the log grows
    for _ in range(5):
        assert node.step() == "wait"
    _round(harness)
    assert node.step() == "wait"
    assert client.polls == 6 and reader.calls[0] == before and not auditor.due()
    # An accepted update makes the next contact due: its inclusion, and the new checkpoint's consistency
    auditor.expect(receipts[0])
    assert auditor.due()
    node.step()
    assert auditor.pending == [] and auditor.verified_updates == 1 and not auditor.due()
    assert reader.calls[0] - before == 3  # checkpoint, consistency proof, inclusion proof
    # The interval bounds the time between checks while nothing is due
    now[0] += 60.0
    assert auditor.due()
    node.step()
    assert reader.calls[0] - before == 4 and not auditor.due()


def test_while_its_round_is_open_a_devices_receipt_alone_makes_no_poll_audit_and_the_close_does(
        harness: Harness) -> None:
    # Prepare: a device that verified the log, then had its update accepted in a round still open
    reader = _Counting(HttpLedgerReader(harness.client))
    _round(harness)
    auditor = _auditor(harness, reader, clock=lambda: 0.0, audit_interval_seconds=60.0)
    auditor.check()
    assert not auditor.due()
    rid = harness.open_round()
    d = next(iter(harness.keys))
    r = harness.post(d, f"/v1/device/rounds/{rid}/update", harness.update_blob(num_examples=10))
    assert r.status_code == 200, r.text
    receipt = json.loads(r.content)
    client = _RoundWaitingClient(rid)
    node = EdgeNode(DeviceConfig(device_id=d, identity_key_file="k", server_key_fingerprint="x"),
                    client, sleep=lambda s: None, auditor=auditor)  # type: ignore[arg-type]
    auditor.expect(receipt)
    node._open_receipt = (rid, int(receipt["ledger_index"]))  # what the node's upload path records
    before = reader.calls[0]

    # Execute / Assert: polls that say the round is still open cost no ledger request
    for _ in range(3):
        assert node.step() == "wait"
    assert (reader.calls[0] - before, len(auditor.pending)) == (0, 1)
    # ... and one naming another round does not defer this receipt's check
    client.round_id = rid + 1
    node.step()
    assert reader.calls[0] > before
    # A wait that no longer names the round (closed, its checkpoint issued): the receipt is proven included
    harness.state.ledger.checkpoint()  # type: ignore[union-attr]
    client.round_id = None
    node.step()
    assert auditor.pending == [] and auditor.verified_updates == 1


def test_a_fork_shown_between_checks_is_caught_at_the_next_due_check(harness: Harness) -> None:
    # Prepare: a device verified the log; the server then shows it a forked view
    now = [0.0]
    _round(harness)
    auditor = _auditor(harness, clock=lambda: now[0], audit_interval_seconds=60.0)
    cp = auditor.check()
    assert cp is not None
    auditor.reader = _Serving(HttpLedgerReader(harness.client), _forged(harness, cp.size))
    node = EdgeNode(DeviceConfig(device_id="edge_0", identity_key_file="k", server_key_fingerprint="x"),
                    _WaitingClient(), sleep=lambda s: None, auditor=auditor)  # type: ignore[arg-type]
    assert node.step() == "wait"  # nothing due: not looked at yet

    # Execute / Assert: the check the interval makes due refuses it
    now[0] += 60.0
    with pytest.raises(LedgerIntegrityError) as info:
        node.step()
    assert info.value.reason == "checkpoint_fork"


def test_an_edge_node_pointed_at_a_rolled_back_log_stops_with_a_clear_reason(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the device verified the latest checkpoint; the server is then restored from an old backup
    _round(harness)
    first = harness.state.ledger.store.read_checkpoints()[0].note  # type: ignore[union-attr]
    _round(harness)
    now = [0.0]
    auditor = _auditor(harness, clock=lambda: now[0])
    auditor.check()
    auditor.reader = _Serving(HttpLedgerReader(harness.client), first)
    now[0] += auditor.audit_interval_seconds  # the next contact is due (an audit interval later)
    cfg = DeviceConfig(device_id="edge_0", identity_key_file="k", server_key_fingerprint="x")
    node = EdgeNode(cfg, _WaitingClient(), sleep=lambda s: None, auditor=auditor)  # type: ignore[arg-type]

    # Execute / Assert
    with caplog.at_level(logging.ERROR, logger="qflare.edge"), pytest.raises(LedgerIntegrityError) as info:
        node.run(max_rounds=1)
    assert info.value.reason == "checkpoint_rollback"
    assert any("refusing to go on" in r.message and "checkpoint_rollback" in r.message for r in caplog.records)


def test_build_auditor_pins_the_log_key_file_and_refuses_a_mismatched_origin(harness: Harness, tmp_path: Path) -> None:
    key_file = Path(harness.state.config.server.key_dir) / "server-sign.pub"
    assert key_file.exists()
    cfg = DeviceConfig(device_id="edge_0", identity_key_file=str(tmp_path / "edge_0.key"), server_key_fingerprint="x",
                       ledger=DeviceLedgerConfig(log_key_file=str(key_file)))
    _round(harness)
    auditor = build_auditor(cfg, tmp_path, harness.client)
    assert auditor is not None and auditor.check() is not None
    assert (tmp_path / "edge_0.ledger.json").exists()
    bad = cfg.model_copy(update={"ledger": DeviceLedgerConfig(log_key_file=str(key_file), origin="elsewhere/log")})
    with pytest.raises(ConfigError):
        build_auditor(bad, tmp_path, harness.client)


def test_with_an_enclave_a_device_pinning_the_written_log_key_audits_the_log(tmp_path: Path) -> None:
    from qflare.crypto.keyfile import write_public_key
    from qflare.server.ledger import LOG_KEY_FILE

    for h in make_harness(tmp_path, enclave=True):
        key_file = Path(h.state.config.server.key_dir) / LOG_KEY_FILE
        cfg = DeviceConfig(device_id="edge_0", identity_key_file=str(tmp_path / "edge_0.key"),
                           server_key_fingerprint="x", ledger=DeviceLedgerConfig(log_key_file=str(key_file)))
        receipts = _round(h)
        auditor = build_auditor(cfg, tmp_path, h.client)
        assert auditor is not None
        for receipt in receipts:
            auditor.expect(receipt)
        assert auditor.check() is not None and auditor.verified_updates == 3
        # A host-held key does not open the enclave-signed checkpoints.
        host_key = write_public_key(tmp_path / "host-sign.pub", ServerKeys.load_or_create(tmp_path / "hk").signing
                                    .public_key())
        host = DeviceConfig(device_id="edge_1", identity_key_file=str(tmp_path / "edge_1.key"),
                            server_key_fingerprint="x", ledger=DeviceLedgerConfig(log_key_file=str(host_key)))
        wrong = build_auditor(host, tmp_path, h.client)
        assert wrong is not None
        with pytest.raises(LedgerIntegrityError):
            wrong.check()


# -- one request per check: /v1/ledger/audit ---------------------------------------------------------
class _CountingHttp:
    """The harness's HTTP client, counting requests by path."""

    def __init__(self, http: Any) -> None:
        self.http, self.paths = http, []  # type: ignore[var-annotated]

    def get(self, path: str, **kwargs: Any) -> Any:
        self.paths.append(path)
        return self.http.get(path, **kwargs)


class _Tampered:
    """A log's read API whose one-request audit answer is altered by ``change`` (a lying server)."""

    def __init__(self, real: HttpLedgerReader, change: Any) -> None:
        self.real, self.change = real, change

    def checkpoint(self) -> bytes | None:
        raise AssertionError("the auditor must use the audit answer, not ask again")

    def consistency(self, first: int, second: int) -> list[bytes]:
        raise AssertionError("the auditor must use the audit answer, not ask again")

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        raise AssertionError("the auditor must use the audit answer, not ask again")

    def audit(self, first: int, leaves: Any) -> AuditBundle | None:
        bundle = self.real.audit(first, leaves)
        assert bundle is not None
        self.change(bundle)
        return bundle


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_a_due_check_is_one_request_and_proves_what_the_three_requests_proved(harness: Harness) -> None:
    # Prepare: a device that verified a first checkpoint and has an accepted update pending
    http = _CountingHttp(harness.client)
    auditor = _auditor(harness, HttpLedgerReader(http))  # type: ignore[arg-type]
    _round(harness)
    assert auditor.check() is not None
    receipts = _round(harness)
    auditor.expect(receipts[1])
    http.paths.clear()

    # Execute
    cp = auditor.check()

    # Assert: one request, the consistency from the old size and the inclusion both verified
    assert http.paths == ["/v1/ledger/audit"]
    assert cp is not None and auditor.pending == [] and auditor.verified_updates == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # a consistency proof that does not verify (a fork hidden behind a bigger checkpoint)
        (lambda b: setattr(b, "consistency_proof", [_flip(b.consistency_proof[0])] + b.consistency_proof[1:]),
         "inconsistent_checkpoint"),
        # no consistency proof at all, or one from another size than the device's verified one
        (lambda b: setattr(b, "first", None), "inconsistent_checkpoint"),
        (lambda b: setattr(b, "first", (b.first or 0) - 1), "inconsistent_checkpoint"),
        # the device's entry left out, its inclusion proof altered, or proven at another index
        (lambda b: b.inclusion_proofs.clear(), "update_not_logged"),
        (lambda b: b.inclusion_proofs.update({k: (i, [_flip(p[0])] + p[1:]) for k, (i, p) in
                                              b.inclusion_proofs.items()}), "update_not_logged"),
        (lambda b: b.inclusion_proofs.update({k: (i + 1, p) for k, (i, p) in b.inclusion_proofs.items()}),
         "update_not_logged"),
        # proofs about another tree than the checkpoint's
        (lambda b: setattr(b, "tree_size", b.tree_size + 1), "inconsistent_checkpoint"),
        # a checkpoint note whose signature does not verify
        (lambda b: setattr(b, "note", b.note.replace(b"\n\n", b"\nx\n\n", 1)), None),
    ],
)
def test_a_forged_audit_answer_is_refused_with_a_reason_and_changes_nothing(harness: Harness, tmp_path: Path,
                                                                           change: Any, reason: str | None) -> None:
    # Prepare
    state = tmp_path / "edge.ledger.json"
    auditor = _auditor(harness, state_file=state)
    _round(harness)
    verified = auditor.check()
    assert verified is not None
    receipts = _round(harness)
    auditor.expect(receipts[0])
    saved, pending = state.read_text(), auditor.pending
    auditor.reader = _Tampered(HttpLedgerReader(harness.client), change)

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()

    # Assert: refused, and the device still relies on what it verified before
    if reason is not None:
        assert info.value.reason == reason, info.value
    assert info.value.message
    assert auditor.verified == verified and auditor.pending == pending and auditor.verified_updates == 0
    assert state.read_text() == saved
    # The honest answer still passes afterwards.
    auditor.reader = HttpLedgerReader(harness.client)
    assert auditor.check() is not None and auditor.pending == [] and auditor.verified_updates == 1


def test_a_rolled_back_checkpoint_in_the_audit_answer_is_refused(harness: Harness) -> None:
    _round(harness)
    old = harness.state.ledger.store.read_checkpoints()[0].note  # type: ignore[union-attr]
    _round(harness)
    auditor = _auditor(harness)
    verified = auditor.check()
    auditor.reader = _Tampered(HttpLedgerReader(harness.client), lambda b: setattr(b, "note", old))
    with pytest.raises(LedgerIntegrityError) as info:
        auditor.check()
    assert info.value.reason == "checkpoint_rollback" and auditor.verified == verified


@pytest.mark.parametrize("body", [
    {}, {"checkpoint": "x"}, {"checkpoint": "x", "tree_size": "y"},
    {"checkpoint": "x", "tree_size": 3, "consistency": {"first": 1, "second": 4, "proof": []}},
    {"checkpoint": "x", "tree_size": 3, "consistency": {"first": 1, "second": 3, "proof": ["zz"]}},
    {"checkpoint": "x", "tree_size": 3, "inclusion": [{"leaf_hash": "00", "leaf_index": 0, "proof": "ab"}]},
    [],
])
def test_a_malformed_audit_answer_is_refused(body: Any) -> None:
    from qflare.edge.audit import parse_audit_bundle

    with pytest.raises(LedgerIntegrityError) as info:
        parse_audit_bundle(body)
    assert info.value.reason == "audit_answer_malformed"


def test_against_a_server_without_the_audit_route_the_device_uses_the_three_routes(harness: Harness) -> None:
    class _Old(_CountingHttp):
        def get(self, path: str, **kwargs: Any) -> Any:
            if path == "/v1/ledger/audit":
                path = "/v1/ledger/no-such-route"
            return super().get(path, **kwargs)

    http = _Old(harness.client)
    auditor = _auditor(harness, HttpLedgerReader(http))  # type: ignore[arg-type]
    _round(harness)
    assert auditor.check() is not None
    auditor.expect(_round(harness)[0])
    http.paths.clear()
    assert auditor.check() is not None and auditor.verified_updates == 1
    assert http.paths == ["/ledger/checkpoint", "/v1/ledger/proof/consistency", "/v1/ledger/proof/inclusion"]
