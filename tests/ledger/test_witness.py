"""Witness logic, tlog-witness bodies, and the k-of-n cosignature policy."""

from __future__ import annotations

import hashlib

import pytest

from qflare.crypto import secret_access
from qflare.errors import InvalidInput, LedgerIntegrityError
from qflare.ledger.cosignature import CosignatureSigner, WitnessPolicy, WitnessQuorumError
from qflare.ledger.log import TransparencyLog
from qflare.ledger.note import Ed25519NoteSigner, assemble_note, parse_note
from qflare.ledger.store import MemoryLogStore
from qflare.ledger.witness import (
    AddCheckpointRequest,
    WitnessConflict,
    WitnessState,
    add_checkpoint,
    format_add_checkpoint_request,
    format_add_checkpoint_response,
    parse_add_checkpoint_request,
    parse_add_checkpoint_response,
)

ORIGIN = "qflare.test/witnessed"
T = 1767139200


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


LOG_SIGNER = Ed25519NoteSigner(ORIGIN, _seed("log"), secret_access.TOKEN)
WITNESSES = [CosignatureSigner(f"w{i}.example", _seed(f"w{i}"), secret_access.TOKEN) for i in range(3)]


def _log() -> TransparencyLog:
    return TransparencyLog(MemoryLogStore(), origin=ORIGIN, signer=LOG_SIGNER)


def _witness(state: WitnessState | None, req: AddCheckpointRequest, i: int = 0):  # type: ignore[no-untyped-def]
    return add_checkpoint(
        state, req, origin=ORIGIN, log_key=[LOG_SIGNER.verifier()], cosigner=WITNESSES[i], timestamp=T
    )


def test_witness_follows_a_growing_log_and_cosigns() -> None:
    # Prepare
    log = _log()
    log.append([b"a", b"b", b"c"])
    first = log.checkpoint()
    sig1, state = _witness(None, AddCheckpointRequest(0, (), first))
    log.append([b"d", b"e"])
    second = log.checkpoint()

    # Execute
    sig2, state2 = _witness(state, AddCheckpointRequest(3, tuple(log.consistency_proof(3)), second))

    # Assert
    assert state2.size == 5
    cosigned = assemble_note(parse_note(second)[0], [*parse_note(second)[1], sig2])
    report = WitnessPolicy([WITNESSES[0].verifier()], 1).check(cosigned, [LOG_SIGNER.verifier()])
    assert [c.timestamp for c in report.cosignatures] == [T]
    assert report.unknown == []
    assert sig1.name == "w0.example"


def test_witness_refuses_a_rollback() -> None:
    # Prepare
    log = _log()
    log.append([b"a"])
    old = log.checkpoint()
    log.append([b"b"])
    _, state = _witness(None, AddCheckpointRequest(0, (), log.checkpoint()))

    # Execute
    with pytest.raises(InvalidInput) as beyond:
        _witness(state, AddCheckpointRequest(2, (), old))
    with pytest.raises(WitnessConflict) as conflict:
        _witness(state, AddCheckpointRequest(1, (), old))

    # Assert
    assert beyond.value.reason == "old_size_beyond_checkpoint"
    assert (conflict.value.reason, conflict.value.latest_size) == ("old_size_mismatch", 2)


def test_witness_refuses_a_fork() -> None:
    # Prepare
    honest, forked = _log(), _log()
    honest.append([b"a", b"b"])
    forked.append([b"a", b"X"])
    _, state = _witness(None, AddCheckpointRequest(0, (), honest.checkpoint()))

    # Execute
    with pytest.raises(LedgerIntegrityError) as same_size:
        _witness(state, AddCheckpointRequest(2, (), forked.checkpoint()))
    forked.append([b"c"])
    with pytest.raises(LedgerIntegrityError) as larger:
        _witness(state, AddCheckpointRequest(2, tuple(forked.consistency_proof(2)), forked.checkpoint()))

    # Assert
    assert same_size.value.reason == "checkpoint_fork"
    assert larger.value.reason == "inconsistent_checkpoint"


def test_witness_refuses_a_checkpoint_not_signed_by_the_log() -> None:
    # Prepare
    impostor = TransparencyLog(
        MemoryLogStore(), origin=ORIGIN, signer=Ed25519NoteSigner(ORIGIN, _seed("impostor"), secret_access.TOKEN)
    )
    impostor.append([b"a"])

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        _witness(None, AddCheckpointRequest(0, (), impostor.checkpoint()))

    # Assert
    assert info.value.reason == "no_verifiable_signatures"


def test_request_and_response_bodies_round_trip() -> None:
    # Prepare
    log = _log()
    log.append([bytes([i]) for i in range(7)])
    log.checkpoint()
    log.append([b"x"])
    note = log.checkpoint()
    proof = log.consistency_proof(7)

    # Execute
    body = format_add_checkpoint_request(7, proof, note)
    req = parse_add_checkpoint_request(body)
    sig, _ = _witness(None, AddCheckpointRequest(0, (), note))
    resp = parse_add_checkpoint_response(format_add_checkpoint_response([sig]))

    # Assert
    assert body.startswith(b"old 7\n")
    assert (req.old_size, list(req.proof), req.checkpoint) == (7, proof, note)
    assert resp == [sig]


@pytest.mark.parametrize(
    "body",
    [b"old 07\n\nx\n", b"new 7\n\nx\n", b"old 7\nnotbase64!\n\nx\n", b"old 7\nAAAA\n\nx\n", b"old 7\n"],
)
def test_malformed_request_bodies(body: bytes) -> None:
    # Prepare / Execute
    with pytest.raises(InvalidInput) as info:
        parse_add_checkpoint_request(body)

    # Assert
    assert info.value.reason == "malformed_request"


def test_policy_counts_known_witnesses_and_reports_unknown_ones() -> None:
    # Prepare
    log = _log()
    log.append([b"a"])
    note = log.checkpoint()
    text, sigs = parse_note(note)
    stranger = CosignatureSigner("stranger.example", _seed("stranger"), secret_access.TOKEN)
    lines = [*sigs, WITNESSES[0].cosign(text, T), stranger.cosign(text, T), WITNESSES[1].cosign(text, T + 1)]
    cosigned = assemble_note(text, lines)
    policy = WitnessPolicy([w.verifier() for w in WITNESSES], 2)

    # Execute
    report = policy.check(cosigned, [LOG_SIGNER.verifier()])
    with pytest.raises(WitnessQuorumError) as info:
        WitnessPolicy([w.verifier() for w in WITNESSES], 3).check(cosigned, [LOG_SIGNER.verifier()])

    # Assert
    assert [c.name for c in report.cosignatures] == ["w0.example", "w1.example"]
    assert [s.name for s in report.unknown] == ["stranger.example"]
    assert info.value.reason == "witness_quorum_not_met"
    assert info.value.report.count == 2


def test_policy_rejects_a_forged_cosignature_from_a_known_witness() -> None:
    # Prepare
    log = _log()
    log.append([b"a"])
    text, sigs = parse_note(log.checkpoint())
    good = WITNESSES[0].cosign(text, T)
    forged = type(good)(good.name, good.key_id, good.signature[:-1] + bytes([good.signature[-1] ^ 1]))

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        WitnessPolicy([WITNESSES[0].verifier()], 1).check(assemble_note(text, [*sigs, forged]))

    # Assert
    assert info.value.reason == "invalid_signature"
