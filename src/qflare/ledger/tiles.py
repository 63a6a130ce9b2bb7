"""C2SP tlog-tiles: path encoding and parsing, hash tiles, entry bundles, and a tile-only root reader.

A hash tile at tile level ``L`` and index ``N`` holds up to 256 consecutive 32-byte node hashes of tree
level ``8L``: nodes ``N*256 .. N*256+255``. Level-0 tiles are leaf hashes. A tile is *full* (256
hashes, path without suffix) or *partial* (``w`` < 256 hashes, path suffix ``.p/w``); the partial tile
for tree size ``s`` at level ``L`` has ``floor(s / 256**L) mod 256`` hashes. Node hashes never change
once computed, so a partial tile is a prefix of every later version of that tile.

Paths (``tile/L/N[.p/W]``, ``tile/entries/N[.p/W]``) write ``N`` in groups of three decimal digits,
each non-final group prefixed ``x``: 1234067 is ``x001/x234/067``.

An entry bundle is the concatenation, for each entry, of a big-endian uint16 length and the entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from qflare.errors import LedgerIntegrityError, MalformedPayload
from qflare.ledger.merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash, perfect_subtrees

__all__ = [
    "MAX_TILE_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileCoordinates",
    "encode_index",
    "encode_index_with_suffix",
    "entries_path",
    "entries_path_for_entry",
    "entry_bundle",
    "hash_within_tile",
    "leaf_hashes_from_bundle",
    "node_to_tile",
    "parse_entry_bundle",
    "parse_index_with_suffix",
    "parse_level",
    "parse_tile_path",
    "root_from_tiles",
    "tile_path",
    "tile_width",
    "tiles_for_size",
]

TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 256
MAX_TILE_LEVEL: Final = 63
_MAX_INDEX: Final = 10**18 - 1  # six groups of three digits, as Tessera
_MAX_ENTRY_SIZE: Final = 0xFFFF

_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")


@dataclass(frozen=True, slots=True)
class TileCoordinates:
    """Where a Merkle node lives: ``tile_level``/``tile_index`` name the tile, ``node_level`` (0..7)
    is the height inside it and ``node_index`` the position at that height."""

    tile_level: int
    tile_index: int
    node_level: int
    node_index: int


def _bad(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="malformed_tile_path")


def encode_index(index: int) -> str:
    """``N`` in x-prefixed groups of three digits: ``1234067`` -> ``x001/x234/067``."""
    if not 0 <= index <= _MAX_INDEX:
        raise _bad(f"tile index {index} out of range")
    digits = str(index)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def encode_index_with_suffix(index: int, width: int = 0) -> str:
    """``encode_index(index)``, plus ``.p/width`` for a partial tile (``0 < width < 256``)."""
    if not 0 <= width < TILE_WIDTH:
        raise _bad(f"tile width {width} out of range")
    encoded = encode_index(index)
    return f"{encoded}.p/{width}" if width else encoded


def tile_path(level: int, index: int, width: int = 0) -> str:
    """``tile/<L>/<N>[.p/<W>]``; ``width`` 0 means a full tile."""
    if not 0 <= level <= MAX_TILE_LEVEL:
        raise _bad(f"tile level {level} out of range")
    return f"tile/{level}/{encode_index_with_suffix(index, width)}"


def entries_path(index: int, width: int = 0) -> str:
    """``tile/entries/<N>[.p/<W>]``; ``width`` 0 means a full bundle."""
    return f"tile/entries/{encode_index_with_suffix(index, width)}"


def entries_path_for_entry(entry_index: int, log_size: int) -> str:
    """Path of the bundle holding ``entry_index`` in a log of ``log_size`` entries."""
    if not 0 <= entry_index < log_size:
        raise _bad(f"entry {entry_index} not in a log of size {log_size}")
    bundle = entry_index // TILE_WIDTH
    return entries_path(bundle, tile_width(0, bundle, log_size))


def parse_level(level: str) -> int:
    """Parse the ``<L>`` element: decimal 0..63, no sign or leading zero."""
    if not _LEVEL.fullmatch(level) or int(level) > MAX_TILE_LEVEL:
        raise _bad(f"invalid tile level {level!r}")
    return int(level)


def parse_index_with_suffix(encoded: str) -> tuple[int, int]:
    """Parse ``<N>[.p/<W>]`` into ``(index, width)`` (width 0 = full). Refuses anything not canonical."""
    width = 0
    body = encoded
    if ".p/" in encoded:
        body, _, w = encoded.partition(".p/")
        if not _WIDTH.fullmatch(w) or int(w) >= TILE_WIDTH:
            raise _bad(f"invalid partial width in {encoded!r}")
        width = int(w)
    groups = body.split("/")
    if len(groups) > 6 or not _LAST.fullmatch(groups[-1]) or not all(_GROUP.fullmatch(g) for g in groups[:-1]):
        raise _bad(f"invalid tile index {encoded!r}")
    index = int("".join(g.lstrip("x") for g in groups))
    if encode_index(index) != body:  # leading zero groups (x000/001) are not canonical
        raise _bad(f"non-canonical tile index {encoded!r}")
    return index, width


def parse_tile_path(path: str) -> tuple[int | None, int, int]:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` into ``(level, index, width)``;
    ``level`` is ``None`` for an entry bundle."""
    parts = path.split("/", 2)
    if len(parts) != 3 or parts[0] != "tile":
        raise _bad(f"not a tile path: {path!r}")
    index, width = parse_index_with_suffix(parts[2])
    if parts[1] == "entries":
        return None, index, width
    return parse_level(parts[1]), index, width


def node_to_tile(tree_level: int, tree_index: int) -> TileCoordinates:
    """The tile holding Merkle node (``tree_level``, ``tree_index``) and its place inside it."""
    node_level = tree_level % TILE_HEIGHT
    shift = TILE_HEIGHT - node_level
    return TileCoordinates(tree_level // TILE_HEIGHT, tree_index >> shift, node_level, tree_index & ((1 << shift) - 1))


def tile_width(level: int, index: int, tree_size: int) -> int:
    """Width suffix of tile (``level``, ``index``) in a tree of ``tree_size``: 0 if full, else the
    number of hashes of the partial tile.

    Raises
    ------
    MalformedPayload
        ``tile_not_in_tree`` if that tile has no hash yet at this size.
    """
    row = tree_size >> (TILE_HEIGHT * level)
    full = row // TILE_WIDTH
    if index < full:
        return 0
    if index == full and row % TILE_WIDTH:
        return row % TILE_WIDTH
    raise MalformedPayload(f"tile {level}/{index} is not part of a tree of size {tree_size}", reason="tile_not_in_tree")


def tiles_for_size(tree_size: int) -> list[tuple[int, int, int]]:
    """Per tile level: ``(level, full_tiles, partial_width)`` for a tree of ``tree_size``."""
    out: list[tuple[int, int, int]] = []
    level = 0
    while True:
        row = tree_size >> (TILE_HEIGHT * level)
        if row == 0:
            return out
        out.append((level, row // TILE_WIDTH, row % TILE_WIDTH))
        level += 1


def hash_within_tile(tile: bytes, node_level: int, node_index: int) -> bytes:
    """Hash of the node at height ``node_level`` (0..7), position ``node_index``, from a tile's bottom row."""
    span = 1 << node_level
    start = node_index * span * HASH_SIZE
    end = start + span * HASH_SIZE
    if end > len(tile):
        raise LedgerIntegrityError("tile is too short for the node asked for", reason="tile_too_short")
    row = [tile[i : i + HASH_SIZE] for i in range(start, end, HASH_SIZE)]
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """``uint16_be(len(e)) || e`` for each entry (at most 256 entries of at most 65535 bytes)."""
    if len(entries) > TILE_WIDTH:
        raise MalformedPayload("an entry bundle holds at most 256 entries", reason="bundle_too_large")
    out = bytearray()
    for e in entries:
        if len(e) > _MAX_ENTRY_SIZE:
            raise MalformedPayload("an entry in a bundle is at most 65535 bytes", reason="entry_too_large")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def parse_entry_bundle(data: bytes, count: int | None = None) -> list[bytes]:
    """Split an entry bundle; with ``count``, require exactly that many entries."""
    entries = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise MalformedPayload("truncated entry bundle length", reason="malformed_bundle")
        n = int.from_bytes(data[i : i + 2], "big")
        if i + 2 + n > len(data):
            raise MalformedPayload("truncated entry in bundle", reason="malformed_bundle")
        entries.append(bytes(data[i + 2 : i + 2 + n]))
        i += 2 + n
    if len(entries) > TILE_WIDTH or (count is not None and len(entries) != count):
        raise MalformedPayload("entry bundle has the wrong number of entries", reason="malformed_bundle")
    return entries


def root_from_tiles(tree_size: int, fetch: Callable[[str], bytes]) -> bytes:
    """Recompute ``MTH`` of a tree of ``tree_size`` from its hash tiles alone.

    ``fetch(path)`` returns the bytes at a tile path (e.g. read from a directory or over HTTP). Only
    the tiles covering the tree's perfect subtrees are fetched, each with the width this size implies.

    Raises
    ------
    LedgerIntegrityError
        ``bad_tile_size`` if a fetched tile does not hold exactly the hashes its path promises.
    """
    if tree_size == 0:
        return EMPTY_ROOT
    cache: dict[tuple[int, int], bytes] = {}
    hashes = []
    for level, index in perfect_subtrees(tree_size):
        c = node_to_tile(level, index)
        key = (c.tile_level, c.tile_index)
        if key not in cache:
            width = tile_width(c.tile_level, c.tile_index, tree_size)
            data = fetch(tile_path(c.tile_level, c.tile_index, width))
            if len(data) != (width or TILE_WIDTH) * HASH_SIZE:
                raise LedgerIntegrityError("tile length does not match its width", reason="bad_tile_size")
            cache[key] = data
        hashes.append(hash_within_tile(cache[key], c.node_level, c.node_index))
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def leaf_hashes_from_bundle(bundle: bytes, count: int | None = None) -> list[bytes]:
    """RFC 9162 leaf hashes of the entries of a bundle."""
    return [leaf_hash(e) for e in parse_entry_bundle(bundle, count)]
