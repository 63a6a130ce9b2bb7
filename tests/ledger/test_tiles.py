"""C2SP tlog-tiles paths (tlog-tiles-paths.json) and the real tiled logs in tiles/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qflare.errors import MalformedPayload
from qflare.ledger.checkpoint import open_checkpoint, parse_checkpoint
from qflare.ledger.cosignature import CosignatureVerifier
from qflare.ledger.merkle import leaf_hash, root_from_leaf_hashes
from qflare.ledger.note import parse_note, parse_verifier_key
from qflare.ledger.tiles import (
    encode_index,
    encode_index_with_suffix,
    entries_path,
    entries_path_for_entry,
    leaf_hashes_from_bundle,
    node_to_tile,
    parse_index_with_suffix,
    parse_level,
    parse_tile_path,
    root_from_tiles,
    tile_path,
    tiles_for_size,
)
from tests.ledger.conftest import VECTORS, load

PATHS = load("tlog-tiles-paths.json")
CHECKPOINTS = load("checkpoints.json")
COSIGS = load("cosignatures.json")
TESSERA = VECTORS / "tiles" / "tessera-testdata-log"
SUNLIGHT = VECTORS / "tiles" / "sunlight-skylight-mirror"


def _reader(root: Path, log: list[str] | None = None):  # type: ignore[no-untyped-def]
    def fetch(path: str) -> bytes:
        if log is not None:
            log.append(path)
        return (root / path).read_bytes()

    return fetch


def test_spec_index_example() -> None:
    # Prepare
    case = PATHS["spec_examples"][0]

    # Execute / Assert
    assert encode_index(case["index"]) == case["encoded"]


@pytest.mark.parametrize("case", PATHS["spec_examples"][1:3], ids=lambda c: str(c["tree_size"]))
def test_spec_tile_counts(case: dict[str, Any]) -> None:
    # Prepare / Execute
    got = tiles_for_size(case["tree_size"])

    # Assert
    assert got == [(e["level"], e["full_tiles"], e["partial_width"]) for e in case["expect"]]


@pytest.mark.parametrize("case", PATHS["tile_paths"], ids=lambda c: c["path"])
def test_tile_paths_encode_and_parse(case: dict[str, Any]) -> None:
    # Prepare / Execute
    path = tile_path(case["level"], case["index"], case["width"])

    # Assert
    assert path == case["path"]
    assert parse_tile_path(path) == (case["level"], case["index"], case["width"])


@pytest.mark.parametrize("case", PATHS["entries_paths"], ids=lambda c: c["path"])
def test_entries_paths_encode_and_parse(case: dict[str, Any]) -> None:
    # Prepare / Execute
    path = entries_path(case["index"], case["width"])

    # Assert
    assert path == case["path"]
    assert parse_tile_path(path) == (None, case["index"], case["width"])


@pytest.mark.parametrize("case", PATHS["entries_path_for_entry_index"]["cases"], ids=lambda c: c["path"])
def test_entries_path_for_entry(case: dict[str, Any]) -> None:
    # Prepare / Execute / Assert
    assert entries_path_for_entry(case["entry_index"], case["log_size"]) == case["path"]


@pytest.mark.parametrize("case", PATHS["index_with_suffix"], ids=lambda c: c["encoded"])
def test_index_with_suffix(case: dict[str, Any]) -> None:
    # Prepare / Execute / Assert
    assert encode_index_with_suffix(case["index"], case["width"]) == case["encoded"]
    assert parse_index_with_suffix(case["encoded"]) == (case["index"], case["width"])


@pytest.mark.parametrize("case", PATHS["parse_cases"]["cases"], ids=lambda c: f"{c['level_str']}:{c['index_str']}")
def test_parse_cases(case: dict[str, Any]) -> None:
    # Prepare
    def parse() -> tuple[int, int, int]:
        level = parse_level(case["level_str"])
        index, width = parse_index_with_suffix(case["index_str"])
        return level, index, width

    # Execute / Assert
    if case["valid"]:
        assert parse() == (case["level"], case["index"], case["width"])
    else:
        with pytest.raises(MalformedPayload) as info:
            parse()
        assert info.value.reason == "malformed_tile_path"


@pytest.mark.parametrize("case", PATHS["node_to_tile"]["cases"], ids=lambda c: f"{c['tree_level']}/{c['tree_index']}")
def test_node_to_tile(case: dict[str, Any]) -> None:
    # Prepare / Execute
    c = node_to_tile(case["tree_level"], case["tree_index"])

    # Assert
    assert (c.tile_level, c.tile_index, c.node_level, c.node_index) == (
        case["tile_level"],
        case["tile_index"],
        case["node_level"],
        case["node_index"],
    )


def test_sumdb_paths_share_the_index_encoding() -> None:
    # Prepare
    cases = [c for c in PATHS["sumdb_tile_paths"]["cases"] if c["valid"] and c["L"] != "data"]

    # Execute
    got = [parse_index_with_suffix(c["path"].split("/", 3)[3]) for c in cases]

    # Assert
    assert len(cases) >= 4
    assert [index for index, _ in got] == [c["N"] for c in cases]
    assert [encode_index(c["N"]) for c in cases] == [c["path"].split("/", 3)[3].split(".p/")[0] for c in cases]


def test_tessera_entries_hash_to_tiles_and_roots_come_from_tiles_alone() -> None:
    # Prepare
    log = CHECKPOINTS["tessera_test_log"]
    verifier = parse_verifier_key(log["verifier_key"])
    fetched: list[str] = []

    # Execute
    results = []
    for size in range(1, 16):
        cp, _ = open_checkpoint((TESSERA / f"checkpoint.{size}").read_bytes(), log["origin"], [verifier])
        bundle_hashes = leaf_hashes_from_bundle((TESSERA / f"tile/entries/000.p/{size}").read_bytes(), size)
        tile = (TESSERA / f"tile/0/000.p/{size}").read_bytes()
        results.append((cp, bundle_hashes, tile, root_from_tiles(size, _reader(TESSERA, fetched))))

    # Assert
    for cp, bundle_hashes, tile, root in results:
        assert b"".join(bundle_hashes) == tile
        assert bundle_hashes == [leaf_hash(x.encode()) for x in log["leaves_ascii"][: cp.size]]
        assert root == cp.root
    assert fetched == [f"tile/0/000.p/{n}" for n in range(1, 16)]


def test_sunlight_300_leaf_tiles_rebuild_and_give_the_cosigned_root() -> None:
    # Prepare
    note = (SUNLIGHT / "checkpoint").read_bytes()
    case = next(c for c in COSIGS["cosigned_checkpoints"] if c["cosigner_name"] == "mirror.example.org")
    witness = parse_verifier_key(case["cosigner_verifier_key"])
    hashes = [leaf_hash(f"record {i}".encode()) for i in range(300)]
    fetched: list[str] = []

    # Execute
    text, sigs = parse_note(note)
    cp = parse_checkpoint(text)
    root = root_from_tiles(300, _reader(SUNLIGHT, fetched))
    assert isinstance(witness, CosignatureVerifier)
    cosig = witness.verify_cosignature(text, sigs[0].signature)

    # Assert
    assert (SUNLIGHT / "tile/0/000").read_bytes() == b"".join(hashes[:256])
    assert (SUNLIGHT / "tile/0/001.p/44").read_bytes() == b"".join(hashes[256:])
    assert (SUNLIGHT / "tile/1/000.p/1").read_bytes() == root_from_leaf_hashes(hashes[:256])
    assert root == cp.root == root_from_leaf_hashes(hashes)
    assert sorted(fetched) == ["tile/0/001.p/44", "tile/1/000.p/1"]
    assert cosig.timestamp == case["expect_timestamp"]
