"""TransparencyLog over MemoryLogStore, hybrid checkpoints, and verify_log against tampering."""

from __future__ import annotations

import base64
import hashlib

import pytest

from qflare.crypto import SigningKey, secret_access
from qflare.errors import Conflict, InvalidInput, LedgerIntegrityError, NotFound
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.log import TransparencyLog, verify_log
from qflare.ledger.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion
from qflare.ledger.note import (
    MLDSA65_SIGNATURE_TYPE,
    Ed25519NoteSigner,
    HybridLogKey,
    HybridNoteSigner,
    open_note,
    parse_note,
    parse_verifier_key,
)
from qflare.ledger.store import MemoryLogStore, StoredCheckpoint
from qflare.ledger.tiles import root_from_tiles, tile_path

ORIGIN = "qflare.test/ledger"


@pytest.fixture(scope="module")
def hybrid_signer() -> HybridNoteSigner:
    return HybridNoteSigner(ORIGIN, SigningKey.from_seed(bytes(range(64)), secret_access.TOKEN), secret_access.TOKEN)


def _entries(n: int, start: int = 0) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(start, start + n)]


def _log(hybrid_signer: HybridNoteSigner, sizes: list[int]) -> tuple[MemoryLogStore, TransparencyLog]:
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=ORIGIN, signer=hybrid_signer)
    done = 0
    for size in sizes:
        log.append(_entries(size - done, done))
        log.checkpoint()
        done = size
    return store, log


def test_append_batches_match_mth_and_tiles() -> None:
    # Prepare
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=ORIGIN)
    entries = _entries(700)

    # Execute
    firsts = [log.append(entries[a:b]) for a, b in [(0, 1), (1, 255), (255, 256), (256, 600), (600, 700)]]

    # Assert
    assert firsts == [0, 1, 255, 256, 600]
    assert log.root() == root_from_leaf_hashes(leaf_hash(e) for e in entries)
    assert log.root(300) == root_from_leaf_hashes(leaf_hash(e) for e in entries[:300])
    assert sorted(store.tiles) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert root_from_tiles(700, lambda p: log.tile(*_parse(p))) == log.root()


def _parse(path: str) -> tuple[int, int, int]:
    from qflare.ledger.tiles import parse_tile_path

    level, index, width = parse_tile_path(path)
    assert level is not None
    return level, index, width


def test_reopened_log_resumes_from_the_store() -> None:
    # Prepare
    store = MemoryLogStore()
    TransparencyLog(store, origin=ORIGIN).append(_entries(1000))

    # Execute
    log = TransparencyLog(store, origin=ORIGIN)
    log.append(_entries(5, 1000))

    # Assert
    assert log.size() == 1005
    assert log.root() == root_from_leaf_hashes(leaf_hash(e) for e in _entries(1005))


def test_proofs_from_the_log_verify() -> None:
    # Prepare
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=ORIGIN)
    log.append(_entries(1000))

    # Execute
    index, path = log.prove_inclusion(leaf_hash(b"entry 777"), 900)
    cons = log.consistency_proof(300, 1000)

    # Assert
    assert index == 777
    verify_inclusion(leaf_hash(b"entry 777"), 777, 900, path, log.root(900))
    verify_consistency(300, 1000, cons, log.root(300), log.root())


def test_concurrent_writer_is_refused() -> None:
    # Prepare
    store = MemoryLogStore()
    a = TransparencyLog(store, origin=ORIGIN)
    b = TransparencyLog(store, origin=ORIGIN)
    a.append(_entries(3))

    # Execute
    with pytest.raises(Conflict) as info:
        b.append(_entries(1, 3))

    # Assert
    assert info.value.reason == "log_size_mismatch"
    assert store.size() == 3


@pytest.mark.parametrize(
    ("call", "error", "reason"),
    [
        (lambda log: log.entry(10), NotFound, "entry_not_found"),
        (lambda log: log.entry(-1), NotFound, "entry_not_found"),
        (lambda log: log.inclusion_proof(10), InvalidInput, "index_out_of_range"),
        (lambda log: log.inclusion_proof(0, 11), InvalidInput, "tree_size_out_of_range"),
        (lambda log: log.inclusion_proof(0, 0), InvalidInput, "tree_size_out_of_range"),
        (lambda log: log.consistency_proof(0, 5), InvalidInput, "tree_size_out_of_range"),
        (lambda log: log.consistency_proof(6, 5), InvalidInput, "tree_size_out_of_range"),
        (lambda log: log.consistency_proof(5, 11), InvalidInput, "tree_size_out_of_range"),
        (lambda log: log.prove_inclusion(b"\x00" * 32), NotFound, "leaf_not_found"),
        (lambda log: log.prove_inclusion(leaf_hash(b"entry 9"), 5), NotFound, "leaf_not_in_tree"),
        (lambda log: log.tile(0, 1), NotFound, "tile_not_found"),
        (lambda log: log.tile(0, 0), NotFound, "tile_not_found"),
        (lambda log: log.entry_bundle(0, 11), NotFound, "tile_not_found"),
    ],
)
def test_out_of_range_requests_have_typed_errors(call, error, reason) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    log = TransparencyLog(MemoryLogStore(), origin=ORIGIN)
    log.append(_entries(10))

    # Execute
    with pytest.raises(error) as info:
        call(log)

    # Assert
    assert info.value.reason == reason


def test_hybrid_checkpoint_has_both_lines_and_standard_verifiers_accept_it(hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    _, log = _log(hybrid_signer, [5])
    note = log.latest_checkpoint()
    assert note is not None
    ed_vkey, ml_vkey = hybrid_signer.log_key().verifier_keys()

    # Execute
    standard = open_note(note, [parse_verifier_key(ed_vkey)])
    qflare = hybrid_signer.log_key().open(note)
    _, sigs = parse_note(note)

    # Assert
    assert standard.verified_names() == [ORIGIN]
    assert len(standard.unverified) == 1
    assert len(qflare.verified) == 2
    assert base64.b64decode(ml_vkey.split("+", 2)[2])[0] == MLDSA65_SIGNATURE_TYPE
    assert [len(s.signature) for s in sigs] == [64, 3309]
    assert parse_checkpoint(qflare.text).root == log.root()


def test_hybrid_key_from_the_enclave_public_key_matches_the_signer(hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    key = SigningKey.from_seed(bytes(range(64)), secret_access.TOKEN).public_key()

    # Execute
    from_public = HybridLogKey.from_verify_key(ORIGIN, key)

    # Assert
    assert from_public.verifier_keys() == hybrid_signer.log_key().verifier_keys()
    assert HybridLogKey.from_verifier_keys(*from_public.verifier_keys()).verifier_keys() == from_public.verifier_keys()


def test_checkpoint_with_only_the_ed25519_half_is_refused(hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    _, log = _log(hybrid_signer, [5])
    note = log.latest_checkpoint()
    assert note is not None
    ed_only = note[: note.rindex("\u2014".encode())]

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        hybrid_signer.log_key().open(ed_only)

    # Assert
    assert info.value.reason == "missing_signature_half"


def test_mldsa_line_does_not_verify_as_plain_text_signature(hybrid_signer: HybridNoteSigner) -> None:
    # Prepare: an ML-DSA line moved onto another checkpoint text (same name and key ID).
    _, log = _log(hybrid_signer, [5, 6])
    first, second = (c.note for c in log.store.read_checkpoints())
    ml_line_first = first.splitlines(keepends=True)[-1]
    forged = second[: second.rindex("\u2014".encode())] + ml_line_first

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        hybrid_signer.log_key().open(forged)

    # Assert
    assert info.value.reason == "invalid_signature"


def test_honest_log_verifies(hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    store, _ = _log(hybrid_signer, [1, 5, 256, 300, 700])

    # Execute
    report = verify_log(store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.ok, report.problems
    assert (report.size, report.checkpoints_checked, report.first_bad_index) == (700, 5, None)


def _tamper_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.fixture()
def signed_store(hybrid_signer: HybridNoteSigner) -> MemoryLogStore:
    store, _ = _log(hybrid_signer, [10, 300, 400])
    return store


def _first(store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> tuple[str, int | None]:
    report = verify_log(store, hybrid_signer.log_key(), origin=ORIGIN)
    assert not report.ok
    return report.problems[0].reason, report.first_bad_index


def test_altered_entry_byte_is_named(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    signed_store.entries[123] = _tamper_byte(signed_store.entries[123], 2)

    # Execute / Assert
    assert _first(signed_store, hybrid_signer) == ("leaf_hash_mismatch", 123)


def test_entry_and_leaf_hash_altered_together_is_caught_by_the_tiles(
    signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner
) -> None:
    # Prepare
    signed_store.entries[42] = b"forged"
    signed_store.leaf_hashes[42] = leaf_hash(b"forged")

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.problems[0].reason == "tile_mismatch"
    assert report.first_bad_index == 42
    assert "checkpoint_root_mismatch" in report.reasons


def test_altered_stored_leaf_hash(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    signed_store.leaf_hashes[7] = _tamper_byte(signed_store.leaf_hashes[7], 31)

    # Execute / Assert
    assert _first(signed_store, hybrid_signer) == ("leaf_hash_mismatch", 7)


def test_everything_rewritten_except_checkpoints(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare: the attacker rewrites entry 350 and rebuilds leaf hashes and tiles, but cannot sign.
    forged = MemoryLogStore()
    entries = list(signed_store.entries)
    entries[350] = b"forged"
    TransparencyLog(forged, origin=ORIGIN).append(entries)
    forged.checkpoints = list(signed_store.checkpoints)

    # Execute
    report = verify_log(forged, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.reasons[0] == "checkpoint_root_mismatch"
    assert report.problems[0].checkpoint == 2
    assert report.first_bad_index == 300


def test_deleted_row(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    del signed_store.entries[200]
    del signed_store.leaf_hashes[200]

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.problems[0].reason == "tile_mismatch"
    assert report.first_bad_index == 200
    assert "checkpoint_beyond_log" in report.reasons


def test_inserted_row(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    signed_store.entries.insert(50, b"inserted")
    signed_store.leaf_hashes.insert(50, leaf_hash(b"inserted"))

    # Execute / Assert
    assert _first(signed_store, hybrid_signer) == ("tile_mismatch", 50)


def test_reordered_rows(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    for rows in (signed_store.entries, signed_store.leaf_hashes):
        rows[60], rows[61] = rows[61], rows[60]

    # Execute / Assert
    assert _first(signed_store, hybrid_signer) == ("tile_mismatch", 60)


def test_altered_checkpoint_body_byte(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    cp = signed_store.checkpoints[1]
    at = cp.note.index(b"\n") + 1  # first digit of the size line: "300" -> "200"
    signed_store.checkpoints[1] = StoredCheckpoint(cp.size, _tamper_byte(cp.note, at))

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.problems[0].reason == "invalid_signature"
    assert report.problems[0].checkpoint == 1


def test_altered_signature_byte(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare: flip a bit inside the base64 of the Ed25519 signature line.
    cp = signed_store.checkpoints[0]
    lines = cp.note.split(b"\n")
    sig_line = lines[-3]
    payload = bytearray(base64.b64decode(sig_line.split(b" ")[-1]))
    payload[10] ^= 0x80
    lines[-3] = b" ".join(sig_line.split(b" ")[:-1] + [base64.b64encode(bytes(payload))])
    signed_store.checkpoints[0] = StoredCheckpoint(cp.size, b"\n".join(lines))

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.reasons == ["invalid_signature"]
    assert report.problems[0].checkpoint == 0


def test_rollback_checkpoint(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare: an older, genuinely signed checkpoint stored again as the latest.
    signed_store.checkpoints.append(signed_store.checkpoints[0])

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.reasons == ["checkpoint_rollback"]
    assert report.problems[0].checkpoint == 3


def test_fork_two_checkpoints_of_one_size(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare: the signer is made to sign a different tree of size 400.
    other = MemoryLogStore()
    olog = TransparencyLog(other, origin=ORIGIN, signer=hybrid_signer)
    olog.append(_entries(399) + [b"other"])
    signed_store.checkpoints.append(StoredCheckpoint(400, olog.checkpoint()))

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.reasons == ["checkpoint_root_mismatch", "checkpoint_fork"]
    assert report.problems[1].checkpoint == 3


def test_checkpoint_from_an_unknown_key(signed_store: MemoryLogStore, hybrid_signer: HybridNoteSigner) -> None:
    # Prepare
    stranger = Ed25519NoteSigner(ORIGIN, hashlib.sha256(b"stranger").digest(), secret_access.TOKEN)
    log = TransparencyLog(signed_store, origin=ORIGIN, signer=stranger)
    log.checkpoint()

    # Execute
    report = verify_log(signed_store, hybrid_signer.log_key(), origin=ORIGIN)

    # Assert
    assert report.reasons == ["no_verifiable_signatures"]


def test_proof_for_another_tree_fails() -> None:
    # Prepare
    a = TransparencyLog(MemoryLogStore(), origin=ORIGIN)
    b = TransparencyLog(MemoryLogStore(), origin=ORIGIN)
    a.append(_entries(20))
    b.append(_entries(19) + [b"different"])
    proof = a.inclusion_proof(3)
    cons = a.consistency_proof(10)

    # Execute
    with pytest.raises(LedgerIntegrityError) as inc:
        verify_inclusion(leaf_hash(b"entry 3"), 3, 20, proof, b.root())
    with pytest.raises(LedgerIntegrityError) as con:
        verify_consistency(10, 20, cons, b.root(10), b.root())

    # Assert
    assert inc.value.reason == "root_mismatch"
    assert con.value.reason == "root_mismatch"


def test_tiles_served_by_the_log_are_at_their_paths() -> None:
    # Prepare
    log = TransparencyLog(MemoryLogStore(), origin=ORIGIN)
    log.append(_entries(300))

    # Execute
    full = log.tile(0, 0)
    partial = log.tile(0, 1, 44)
    bundle = log.entry_bundle(1, 44)

    # Assert
    assert tile_path(0, 1, 44) == "tile/0/001.p/44"
    assert full == b"".join(leaf_hash(e) for e in _entries(256))
    assert partial == b"".join(leaf_hash(e) for e in _entries(44, 256))
    assert bundle[:2] == len(b"entry 256").to_bytes(2, "big")
