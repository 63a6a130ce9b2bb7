"""The ``sign_note`` ecall: the enclave signs the transparency log's checkpoints with its own hybrid key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from qflare.crypto.secret_access import TOKEN
from qflare.crypto.signing import SigningKey
from qflare.enclave.config import EnclaveConfig
from qflare.errors import LedgerIntegrityError, PermissionDenied
from qflare.ledger import HybridLogKey, HybridNoteSigner, MemoryLogStore, TransparencyLog, verify_log
from qflare.ledger.checkpoint import Checkpoint, open_checkpoint
from qflare.ledger.note import ED25519_SIGNATURE_TYPE, Ed25519NoteVerifier, open_note, parse_note
from qflare.server.ledger import DEFAULT_ORIGIN, EnclaveNoteSigner

from .conftest import EnclaveFactory

BODY = Checkpoint(DEFAULT_ORIGIN, 5, bytes(range(32))).to_body()


def test_a_checkpoint_signed_in_the_enclave_verifies_under_its_key_and_not_the_hosts(
    start_enclave: EnclaveFactory,
) -> None:
    # Prepare
    enclave = start_enclave()
    enclave_key = HybridLogKey.from_verify_key(DEFAULT_ORIGIN, enclave.public_keys().signing)
    host_key = HybridNoteSigner(DEFAULT_ORIGIN, SigningKey.generate(), TOKEN).log_key()

    # Execute
    note = BODY + b"\n" + enclave.sign_note(BODY)

    # Assert: both halves under the enclave's key; the Ed25519 line alone is a standard note signature
    cp, opened = open_checkpoint(note, DEFAULT_ORIGIN, enclave_key.verifiers())
    assert cp.size == 5 and len(opened.verified) == 2
    enclave_key.open(note)
    _, sigs = parse_note(note)
    assert [s.key_id for s in sigs] == [enclave_key.ed25519.key_id, enclave_key.mldsa65.key_id]
    plain = Ed25519NoteVerifier(DEFAULT_ORIGIN, enclave_key.ed25519.public_bytes())
    assert base64.b64decode(plain.verifier_key().split("+", 2)[2])[0] == ED25519_SIGNATURE_TYPE == 0x01
    open_note(note, [plain])
    with pytest.raises(LedgerIntegrityError):
        host_key.open(note)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (Checkpoint("elsewhere.example/log", 5, bytes(32)).to_body(), "origin_mismatch"),
        (b"not a checkpoint\n", "malformed_checkpoint"),
        (b"\xff\xfe garbage", "malformed_checkpoint"),
        (BODY.replace(b"\n5\n", b"\n05\n"), "malformed_checkpoint"),
        (b"", "malformed_checkpoint"),
    ],
)
def test_the_enclave_refuses_to_sign_anything_but_its_own_checkpoints(
    start_enclave: EnclaveFactory, body: bytes, reason: str
) -> None:
    enclave = start_enclave()
    with pytest.raises(LedgerIntegrityError) as info:
        enclave.sign_note(body)
    assert info.value.reason == reason


def test_the_enclave_refuses_extension_lines_and_signs_for_its_measured_origin(
    start_enclave: EnclaveFactory,
) -> None:
    enclave = start_enclave(config=EnclaveConfig(ledger_origin="example.org/log"))
    with pytest.raises(PermissionDenied) as info:
        enclave.sign_note(Checkpoint("example.org/log", 1, bytes(32), ("ext line",)).to_body())
    assert info.value.reason == "checkpoint_extensions_refused"
    with pytest.raises(LedgerIntegrityError):
        enclave.sign_note(BODY)  # the default origin is not this enclave's
    body = Checkpoint("example.org/log", 1, bytes(32)).to_body()
    HybridLogKey.from_verify_key("example.org/log", enclave.public_keys().signing).open(
        body + b"\n" + enclave.sign_note(body))


def test_a_log_checkpointed_through_the_enclave_verifies_with_the_enclave_key(
    start_enclave: EnclaveFactory,
) -> None:
    # Prepare
    enclave = start_enclave()
    signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, enclave.public_keys().signing,
                               head=enclave.ledger_head)
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=DEFAULT_ORIGIN, signer=signer)
    signer.prover = log.consistency_proof

    # Execute
    for n in range(3):
        log.append([f"entry {n}-{i}".encode() for i in range(n + 1)])
        log.checkpoint()

    # Assert
    assert verify_log(store, signer.log_key(), origin=DEFAULT_ORIGIN).ok
    host_key = HybridNoteSigner(DEFAULT_ORIGIN, SigningKey.generate(), TOKEN).log_key()
    assert not verify_log(store, host_key, origin=DEFAULT_ORIGIN).ok


def test_the_host_refuses_lines_that_do_not_verify_under_the_enclave_key(start_enclave: EnclaveFactory) -> None:
    enclave = start_enclave()
    other = SigningKey.generate().public_key()
    signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, other)
    with pytest.raises(LedgerIntegrityError):
        signer.sign_note(BODY)


def _log_with(entries: list[bytes]) -> TransparencyLog:
    log = TransparencyLog(MemoryLogStore(), origin=DEFAULT_ORIGIN)
    log.append(entries)
    return log


def _body(log: TransparencyLog, size: int | None = None) -> bytes:
    n = log.size() if size is None else size
    return Checkpoint(DEFAULT_ORIGIN, n, log.root(n)).to_body()


def test_the_enclave_signs_only_checkpoints_that_extend_the_last_one_it_signed(
    start_enclave: EnclaveFactory, tmp_path: Path
) -> None:
    # Prepare: the enclave signed the log at size 4
    work = tmp_path / "enclave"
    enclave = start_enclave(work)
    log = _log_with([b"e%d" % i for i in range(4)])
    enclave.sign_note(_body(log))
    assert enclave.ledger_head() == (4, log.root())
    log.append([b"e4", b"e5"])
    rewritten = _log_with([b"e0", b"forged", b"e2", b"e3", b"e4", b"e5"])

    # Execute / Assert: rollback, fork, a growth without proof or with the proof of a rewritten log
    refusals = {
        "checkpoint_rollback": lambda: enclave.sign_note(_body(log, 3)),
        "checkpoint_fork": lambda: enclave.sign_note(_body(rewritten, 4)),
        "inconsistent_checkpoint": lambda: enclave.sign_note(_body(log)),
        "inconsistent_checkpoint ": lambda: enclave.sign_note(_body(rewritten), rewritten.consistency_proof(4, 6)),
    }
    for reason, attempt in refusals.items():
        with pytest.raises(LedgerIntegrityError) as info:
            attempt()
        assert info.value.reason == reason.strip(), reason
        assert enclave.ledger_head() == (4, log.root(4))  # nothing moved

    # The same checkpoint again (a lost answer) and a proven extension are signed.
    enclave.sign_note(_body(log, 4))
    enclave.sign_note(_body(log), log.consistency_proof(4, 6))
    assert enclave.ledger_head() == (6, log.root())

    # The head is sealed state: a restarted enclave still refuses the rollback.
    enclave.close()
    again = start_enclave(work)
    assert again.ledger_head() == (6, log.root())
    with pytest.raises(LedgerIntegrityError) as info:
        again.sign_note(_body(log, 4))
    assert info.value.reason == "checkpoint_rollback"


def test_a_host_that_rewrote_a_checkpointed_entry_gets_no_new_checkpoint(start_enclave: EnclaveFactory) -> None:
    # Prepare: a log checkpointed through the enclave, then an entry rewritten under it (tiles and all)
    enclave = start_enclave()
    signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, enclave.public_keys().signing,
                               head=enclave.ledger_head)
    log = TransparencyLog(MemoryLogStore(), origin=DEFAULT_ORIGIN, signer=signer)
    signer.prover = log.consistency_proof
    log.append([b"a", b"b", b"c"])
    log.checkpoint()
    forged_signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, enclave.public_keys().signing,
                                      head=enclave.ledger_head)
    forged = TransparencyLog(MemoryLogStore(), origin=DEFAULT_ORIGIN, signer=forged_signer)
    forged_signer.prover = forged.consistency_proof
    forged.append([b"a", b"B", b"c", b"d"])

    # Execute / Assert
    with pytest.raises(LedgerIntegrityError) as info:
        forged.checkpoint()
    assert info.value.reason == "inconsistent_checkpoint"
    log.append([b"d"])
    log.checkpoint()  # the honest log goes on
    assert enclave.ledger_head() == (4, log.root())
