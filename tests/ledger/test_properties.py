"""Hypothesis properties: every generated proof verifies, and any single-byte change fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import LedgerIntegrityError
from qflare.ledger.log import TransparencyLog
from qflare.ledger.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion
from qflare.ledger.store import MemoryLogStore

MAX = 400


def _log(n: int) -> TransparencyLog:
    log = TransparencyLog(MemoryLogStore(), origin="prop")
    log.append([i.to_bytes(4, "big") for i in range(n)])
    return log


LOGS = {n: _log(n) for n in (1, 2, 3, 7, 8, 255, 256, 257, 300, MAX)}


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@st.composite
def inclusion_case(draw: st.DrawFn) -> tuple[TransparencyLog, int, int]:
    n = draw(st.sampled_from(sorted(LOGS)))
    size = draw(st.integers(1, n))
    return LOGS[n], draw(st.integers(0, size - 1)), size


@st.composite
def consistency_case(draw: st.DrawFn) -> tuple[TransparencyLog, int, int]:
    n = draw(st.sampled_from(sorted(LOGS)))
    size2 = draw(st.integers(1, n))
    return LOGS[n], draw(st.integers(1, size2)), size2


@settings(max_examples=300, deadline=None)
@given(inclusion_case(), st.data())
def test_inclusion_verifies_and_any_byte_change_fails(
    case: tuple[TransparencyLog, int, int], data: st.DataObject
) -> None:
    # Prepare
    log, index, size = case
    leaf = leaf_hash(index.to_bytes(4, "big"))
    proof = log.inclusion_proof(index, size)
    root = log.root(size)

    # Execute
    verify_inclusion(leaf, index, size, proof, root)
    target = data.draw(st.sampled_from(["leaf", "root", "proof"] if proof else ["leaf", "root"]))
    at = data.draw(st.integers(0, 31))
    if target == "leaf":
        leaf = _flip(leaf, at)
    elif target == "root":
        root = _flip(root, at)
    else:
        k = data.draw(st.integers(0, len(proof) - 1))
        proof = [*proof[:k], _flip(proof[k], at), *proof[k + 1 :]]

    # Assert
    with pytest.raises(LedgerIntegrityError) as info:
        verify_inclusion(leaf, index, size, proof, root)
    assert info.value.reason == "root_mismatch"


@settings(max_examples=300, deadline=None)
@given(consistency_case(), st.data())
def test_consistency_verifies_and_any_byte_change_fails(
    case: tuple[TransparencyLog, int, int], data: st.DataObject
) -> None:
    # Prepare
    log, size1, size2 = case
    proof = log.consistency_proof(size1, size2)
    root1, root2 = log.root(size1), log.root(size2)

    # Execute
    verify_consistency(size1, size2, proof, root1, root2)
    target = data.draw(st.sampled_from(["root1", "root2", "proof"] if proof else ["root1", "root2"]))
    at = data.draw(st.integers(0, 31))
    if target == "root1":
        root1 = _flip(root1, at)
    elif target == "root2":
        root2 = _flip(root2, at)
    else:
        k = data.draw(st.integers(0, len(proof) - 1))
        proof = [*proof[:k], _flip(proof[k], at), *proof[k + 1 :]]

    # Assert
    with pytest.raises(LedgerIntegrityError) as info:
        verify_consistency(size1, size2, proof, root1, root2)
    assert info.value.reason == "root_mismatch"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=8))
def test_batched_appends_equal_mth(batches: list[int]) -> None:
    # Prepare
    log = TransparencyLog(MemoryLogStore(), origin="prop")
    entries: list[bytes] = []

    # Execute
    for b in batches:
        batch = [len(entries).to_bytes(4, "big") + bytes([j]) for j in range(b)]
        log.append(batch)
        entries.extend(batch)

    # Assert
    assert log.root() == root_from_leaf_hashes(leaf_hash(e) for e in entries)


def test_every_proof_up_to_64_leaves_verifies() -> None:
    # Prepare
    log = _log(64)
    checked = 0

    # Execute
    for size in range(1, 65):
        root = log.root(size)
        for i in range(size):
            verify_inclusion(leaf_hash(i.to_bytes(4, "big")), i, size, log.inclusion_proof(i, size), root)
            checked += 1
        for s1 in range(1, size + 1):
            verify_consistency(s1, size, log.consistency_proof(s1, size), log.root(s1), root)
            checked += 1

    # Assert
    assert checked == 2 * sum(range(1, 65))
