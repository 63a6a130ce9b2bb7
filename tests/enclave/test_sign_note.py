"""The ``sign_note`` ecall: the enclave signs the transparency log's checkpoints with its own hybrid key."""

from __future__ import annotations

import base64

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
    signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, enclave.public_keys().signing)
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=DEFAULT_ORIGIN, signer=signer)

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
