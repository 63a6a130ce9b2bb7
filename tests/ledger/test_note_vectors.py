"""C2SP signed notes, checkpoints and cosignatures against signed-notes.json, checkpoints.json and
cosignatures.json."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from qflare.crypto import secret_access
from qflare.errors import LedgerIntegrityError, MalformedPayload
from qflare.ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from qflare.ledger.cosignature import CosignatureVerifier, cosignature_timestamp, cosigned_message
from qflare.ledger.merkle import leaf_hash, root_from_leaf_hashes
from qflare.ledger.note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    NoteVerifier,
    UnverifiedNoteError,
    open_note,
    parse_note,
    parse_verifier_key,
    sign_note,
)
from tests.ledger.conftest import load

NOTES = load("signed-notes.json")
CHECKPOINTS = load("checkpoints.json")
COSIGS = load("cosignatures.json")


def _note_bytes(case: dict[str, Any]) -> bytes:
    return base64.b64decode(case["note_b64"]) if "note_b64" in case else case["note"].encode()


@pytest.mark.parametrize("case", NOTES["verifier_key_parse_cases"], ids=lambda c: c["vkey"][:40])
def test_verifier_key_parse(case: dict[str, Any]) -> None:
    # Prepare
    vkey = case["vkey"]

    # Execute / Assert
    if case["valid"]:
        v = parse_verifier_key(vkey)
        assert isinstance(v, Ed25519NoteVerifier)
        assert (v.name, f"{v.key_id:08x}") == (case["name"], case["key_id"])
        assert v.verifier_key() == vkey
    else:
        with pytest.raises(MalformedPayload) as info:
            parse_verifier_key(vkey)
        assert info.value.reason in {"invalid_verifier_key", "verifier_key_id_mismatch", "unknown_key_type"}


def test_signing_is_byte_exact() -> None:
    # Prepare
    case = NOTES["signing_cases"][0]
    signer = Ed25519NoteSigner.from_private_key(case["signer_key"], secret_access.TOKEN)

    # Execute
    note = sign_note(case["text"].encode(), [signer])

    # Assert
    assert note == case["expected_note"].encode()
    assert signer.verifier().verifier_key() == case["verifier_key"]


@pytest.mark.parametrize("case", NOTES["open_cases"], ids=lambda c: c["desc"][:60])
def test_open_note(case: dict[str, Any]) -> None:
    # Prepare
    msg = _note_bytes(case)
    verifiers: list[NoteVerifier] = []
    rejected_key = False
    for vk in case["verifier_keys"]:
        try:
            verifiers.append(parse_verifier_key(vk))
        except MalformedPayload as exc:
            assert exc.reason == "verifier_key_id_mismatch"
            rejected_key = True

    # Execute / Assert
    if case["expect_valid"]:
        note = open_note(msg, verifiers)
        assert note.verified_names() == case["expect_verified_signers"]
        assert [s.name for s in note.unverified] == case["expect_unverified_signers"]
        return
    with pytest.raises(LedgerIntegrityError) as info:
        open_note(msg, verifiers)
    expected = case["expect_error"]
    if expected == "malformed note":
        assert info.value.reason == "malformed_note"
    elif expected.startswith("invalid signature"):
        assert info.value.reason == "invalid_signature"
        if "for key" in expected:
            assert expected in info.value.message
    else:
        assert info.value.reason == "no_verifiable_signatures" or rejected_key
        assert isinstance(info.value, UnverifiedNoteError)
        assert [s.name for s in info.value.note.unverified] == case.get(
            "expect_unverified_signers", [s.name for s in parse_note(msg)[1]]
        )


def test_spec_checkpoint_parses_and_has_no_known_signer() -> None:
    # Prepare
    case = CHECKPOINTS["spec_example"]
    text, sigs = parse_note(case["note"].encode())

    # Execute
    cp = parse_checkpoint(text)

    # Assert
    assert (cp.origin, cp.size, base64.b64encode(cp.root).decode()) == (
        case["expect_origin"],
        case["expect_tree_size"],
        case["expect_root_b64"],
    )
    assert f"{sigs[0].key_id:08x}" == case["signature_key_id_hex"]


@pytest.mark.parametrize("case", CHECKPOINTS["signed_checkpoints"], ids=lambda c: c["desc"][:40])
def test_signed_checkpoints(case: dict[str, Any]) -> None:
    # Prepare
    verifier = parse_verifier_key(case["verifier_key"])

    # Execute / Assert
    if case["expect_valid"]:
        cp, note = open_checkpoint(case["note"].encode(), case["expected_origin"], [verifier])
        assert cp.size == case["expect_tree_size"]
        assert base64.b64encode(cp.root).decode() == case["expect_root_b64"]
        assert note.verified_names() == ["sum.golang.org"]
    else:
        with pytest.raises(LedgerIntegrityError) as info:
            open_checkpoint(case["note"].encode(), case["expected_origin"], [verifier])
        assert info.value.reason == "origin_mismatch"


def test_tessera_log_all_16_checkpoints_verify_and_match_mth() -> None:
    # Prepare
    log = CHECKPOINTS["tessera_test_log"]
    verifier = parse_verifier_key(log["verifier_key"])
    hashes = [leaf_hash(x.encode()) for x in log["leaves_ascii"]]

    # Execute
    opened = [open_checkpoint(c["note"].encode(), log["origin"], [verifier])[0] for c in log["checkpoints"]]

    # Assert
    assert len(opened) == 16
    assert [cp.size for cp in opened] == list(range(16))
    assert [cp.root for cp in opened] == [root_from_leaf_hashes(hashes[: cp.size]) for cp in opened]
    assert [cp.root.hex() for cp in opened] == [c["root_hex"] for c in log["checkpoints"]]


def test_tessera_test_signer_reproduces_its_checkpoints() -> None:
    # Prepare
    log = CHECKPOINTS["tessera_test_log"]
    signer = Ed25519NoteSigner.from_private_key(log["signer_key_TEST_ONLY"], secret_access.TOKEN)
    first = log["checkpoints"][0]

    # Execute
    note = sign_note(Checkpoint(log["origin"], 0, base64.b64decode(first["root_b64"])).to_body(), [signer])

    # Assert
    assert note == first["note"].encode()


@pytest.mark.parametrize("case", CHECKPOINTS["body_parse_cases"]["cases"], ids=lambda c: repr(c["body"][:20]))
def test_checkpoint_body_strict_parsing(case: dict[str, Any]) -> None:
    # Prepare
    body = case["body"].encode()

    # Execute / Assert: every case here is invalid under strict C2SP (roots are not 32 bytes, etc.)
    with pytest.raises(LedgerIntegrityError) as info:
        parse_checkpoint(body)
    assert info.value.reason == "malformed_checkpoint"


def test_sumdb_tree_note_golden_and_bad() -> None:
    # Prepare
    tree = CHECKPOINTS["sumdb_tree_note"]
    origin = "go.sum database tree"

    # Execute
    cp = parse_checkpoint(tree["golden"], origin=origin)
    reasons = []
    for bad in tree["bad"]:
        with pytest.raises(LedgerIntegrityError) as info:
            parse_checkpoint(bad, origin=origin)
        reasons.append(info.value.reason)

    # Assert
    assert cp.size == tree["tree_size"]
    assert cp.root == leaf_hash(tree["hash_input_ascii"].encode())
    assert cp.to_body() == tree["golden"].encode()
    assert reasons == ["origin_mismatch", "malformed_checkpoint", "malformed_checkpoint"]


def test_checkpoint_refuses_leading_zero_size() -> None:
    # Prepare
    body = b"Log\n0123\n" + base64.b64encode(bytes(32)) + b"\n"

    # Execute / Assert
    with pytest.raises(LedgerIntegrityError) as info:
        parse_checkpoint(body)
    assert info.value.reason == "malformed_checkpoint"


@pytest.mark.parametrize("case", COSIGS["cosigned_checkpoints"], ids=lambda c: c["desc"][:50])
def test_cosignatures(case: dict[str, Any]) -> None:
    # Prepare
    verifier = parse_verifier_key(case["cosigner_verifier_key"])
    text, sigs = parse_note(case["note"].encode())
    line = next(s for s in sigs if s.name == case["cosigner_name"])

    # Execute / Assert
    if case["expect_cosignature_valid"]:
        assert isinstance(verifier, CosignatureVerifier)
        cosig = verifier.verify_cosignature(text, line.signature)
        assert cosig.timestamp == case["expect_timestamp"]
        if case.get("expect_signed_message"):
            assert cosigned_message(text, cosig.timestamp) == case["expect_signed_message"].encode()
        note = open_note(case["note"].encode(), [verifier])
        assert note.verified_names() == [case["cosigner_name"]]
    else:
        with pytest.raises(LedgerIntegrityError) as info:
            open_note(case["note"].encode(), [verifier])
        # A type-0x01 key has another key ID, so the 0x04 line is from an unknown key.
        assert info.value.reason in (
            {"no_verifiable_signatures"} if verifier.key_id != line.key_id else {"invalid_signature"}
        )


def test_cosignature_as_plain_ed25519_key_is_unknown() -> None:
    # Prepare
    case = COSIGS["cosigned_checkpoints"][4]
    verifier = parse_verifier_key(case["cosigner_verifier_key"])

    # Execute
    with pytest.raises(UnverifiedNoteError) as info:
        open_note(case["note"].encode(), [verifier])

    # Assert
    assert isinstance(verifier, Ed25519NoteVerifier)
    assert "witness.example.org" in [s.name for s in info.value.note.unverified]


def test_cosignature_spec_example() -> None:
    # Prepare
    case = COSIGS["spec_example"]
    text, sigs = parse_note(case["note"].encode())
    line = next(s for s in sigs if s.name == case["cosigner_name"])

    # Execute
    ts = int.from_bytes(line.signature[:8], "big")

    # Assert
    assert f"{line.key_id:08x}" == case["expect_key_id_hex"]
    assert ts == case["expect_timestamp"]
    assert cosigned_message(text, ts) == case["expect_signed_message"].encode()


@pytest.mark.parametrize("case", COSIGS["timestamp_parse_cases"], ids=lambda c: c["source"][-30:])
def test_cosignature_timestamp_parse(case: dict[str, Any]) -> None:
    # Prepare
    sig = case["signature_b64"]

    # Execute / Assert
    if case["valid"]:
        assert cosignature_timestamp(sig) == case["expect_timestamp"]
    else:
        with pytest.raises(LedgerIntegrityError) as info:
            cosignature_timestamp(sig)
        assert info.value.reason == "malformed_cosignature"


@pytest.mark.parametrize("case", COSIGS["cosigner_vkey_parse_cases"], ids=lambda c: c["vkey"][:30])
def test_cosigner_vkey_parse(case: dict[str, Any]) -> None:
    # Prepare
    vkey = case["vkey"]

    # Execute / Assert
    if case["valid"]:
        v = parse_verifier_key(vkey)
        assert isinstance(v, CosignatureVerifier)
        assert v.verifier_key() == vkey
    else:
        with pytest.raises(MalformedPayload) as info:
            parse_verifier_key(vkey)
        assert info.value.reason in {"verifier_key_id_mismatch", "unknown_key_type"}
