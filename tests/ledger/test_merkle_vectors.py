"""RFC 9162 hashing, compact ranges and proofs against rfc6962-tree.json, rfc6962-proofs.json and
every probe in merkle-testdata/."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from qflare.errors import LedgerIntegrityError
from qflare.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from tests.ledger.conftest import VECTORS, load

TREE = load("rfc6962-tree.json")
PROOFS = load("rfc6962-proofs.json")
LEAVES = [bytes.fromhex(x) for x in TREE["leaf_inputs_hex"]]
LEAF_HASHES = [leaf_hash(x) for x in LEAVES]
PROBES = sorted((VECTORS / "merkle-testdata").rglob("*.json"))


def _hash_range(start: int, end: int) -> bytes:
    return root_from_leaf_hashes(LEAF_HASHES[start:end])


def test_hasher_vectors() -> None:
    # Prepare
    cases = TREE["hasher_vectors"]

    # Execute
    got = []
    for c in cases:
        if c["kind"] == "empty_tree":
            got.append(EMPTY_ROOT)
        elif c["kind"] == "leaf":
            got.append(leaf_hash(bytes.fromhex(c["input_hex"])))
        else:
            got.append(node_hash(bytes.fromhex(c["left_hex"]), bytes.fromhex(c["right_hex"])))

    # Assert
    assert [g.hex() for g in got] == [c["expected"] for c in cases]


def test_node_hashes_by_level() -> None:
    # Prepare
    levels = TREE["node_hashes_by_level"]["levels"]

    # Execute
    got = [[_hash_range(i << k, (i + 1) << k).hex() for i in range(len(levels[k]))] for k in range(len(levels))]

    # Assert
    assert got == levels


def test_roots_and_compact_ranges_by_size_appending_leaf_by_leaf() -> None:
    # Prepare
    roots = {r["tree_size"]: r["root"] for r in TREE["roots_by_tree_size"]}
    ranges = TREE["compact_ranges_by_tree_size"]["ranges"]
    cr = CompactRange()
    got_roots = {0: cr.root().hex()}
    got_ranges = [[h.hex() for h in cr.hashes()]]

    # Execute
    for h in LEAF_HASHES:
        cr.append(h)
        got_roots[cr.size] = cr.root().hex()
        got_ranges.append([x.hex() for x in cr.hashes()])

    # Assert
    assert got_roots == roots
    expected_ranges = [r["hashes"] if isinstance(r, dict) else r for r in ranges]
    assert got_ranges == expected_ranges


@pytest.mark.parametrize("case", PROOFS["inclusion"], ids=lambda c: f"{c['leaf_index']}-{c['tree_size']}")
def test_published_inclusion_proofs_regenerate_and_verify(case: dict[str, Any]) -> None:
    # Prepare
    index, size = case["leaf_index"], case["tree_size"]

    # Execute
    proof = inclusion_proof(index, size, _hash_range)

    # Assert
    assert [p.hex() for p in proof] == case["path"]
    assert LEAF_HASHES[index].hex() == case["leaf_hash"]
    verify_inclusion(LEAF_HASHES[index], index, size, proof, bytes.fromhex(case["root"]))


@pytest.mark.parametrize("case", PROOFS["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_published_consistency_proofs_regenerate_and_verify(case: dict[str, Any]) -> None:
    # Prepare
    s1, s2 = case["size1"], case["size2"]

    # Execute
    proof = consistency_proof(s1, s2, _hash_range)

    # Assert
    assert [p.hex() for p in proof] == case["proof"]
    verify_consistency(s1, s2, proof, bytes.fromhex(case["root1"]), bytes.fromhex(case["root2"]))


def _b64(x: str | None) -> bytes:
    return base64.b64decode(x) if x else b""


def _run_probe(path: Path) -> tuple[bool, Exception | None]:
    d = json.loads(path.read_text())
    proof = [_b64(p) for p in (d.get("proof") or [])]
    try:
        if "leafIdx" in d:
            verify_inclusion(_b64(d["leafHash"]), d["leafIdx"], d["treeSize"], proof, _b64(d["root"]))
        else:
            verify_consistency(d["size1"], d["size2"], proof, _b64(d["root1"]), _b64(d["root2"]))
    except LedgerIntegrityError as exc:
        return d["wantErr"], exc
    return d["wantErr"], None


def test_probe_census() -> None:
    # Prepare / Execute
    want_err = [json.loads(p.read_text())["wantErr"] for p in PROBES]

    # Assert
    assert len(PROBES) == 196
    assert sum(want_err) == 184


@pytest.mark.parametrize("path", PROBES, ids=lambda p: str(p.relative_to(VECTORS / "merkle-testdata")))
def test_probe(path: Path) -> None:
    # Prepare / Execute
    want_err, err = _run_probe(path)

    # Assert
    if want_err:
        assert isinstance(err, LedgerIntegrityError)
        assert err.reason in {
            "index_out_of_range",
            "bad_hash_size",
            "bad_proof_length",
            "root_mismatch",
            "invalid_tree_size",
        }
    else:
        assert err is None


def test_consistency_from_size_zero_is_refused_even_for_empty_trees() -> None:
    # Prepare / Execute
    with pytest.raises(LedgerIntegrityError) as info:
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)

    # Assert
    assert info.value.reason == "invalid_tree_size"


def test_equal_sizes_need_empty_proof() -> None:
    # Prepare
    root = _hash_range(0, 3)

    # Execute
    with pytest.raises(LedgerIntegrityError) as info:
        verify_consistency(3, 3, [root], root, root)

    # Assert
    assert info.value.reason == "bad_proof_length"
