"""The transparency log facade (:class:`TransparencyLog`) and the full offline verifier (:func:`verify_log`).

The log keeps a compact range of its current tree in memory and every perfect-subtree hash needed
for proofs in hash tiles in the store (levels 0, 8, 16, ...; the seven levels between are recomputed
from a tile's bottom row, and full tiles are cached). Appending costs O(1) amortised hashes per leaf
plus one store write per batch; a root, an inclusion or a consistency proof costs O(log n) node
lookups at any size, and never rebuilds the tree.

Errors that the HTTP layer maps:

- :class:`qflare.errors.NotFound` (404): ``entry_not_found``, ``leaf_not_found``, ``leaf_not_in_tree``,
  ``tile_not_found``.
- :class:`qflare.errors.InvalidInput` (400): ``tree_size_out_of_range``, ``index_out_of_range``.
- :class:`qflare.errors.Conflict` (409): ``log_size_mismatch`` (another writer appended first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qflare.crypto.signing import VerifyKey
from qflare.errors import ConfigError, InvalidInput, LedgerIntegrityError, MalformedPayload, NotFound
from qflare.ledger.checkpoint import Checkpoint, parse_checkpoint
from qflare.ledger.entries import SIGNED_EVENTS, LedgerEvent, decode_event, encode_event, verify_entry
from qflare.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_subtrees,
    verify_consistency,
)
from qflare.ledger.note import HybridLogKey, Note, NoteSigner, NoteVerifier, open_note, sign_note
from qflare.ledger.store import LogStore, TileKey
from qflare.ledger.tiles import TILE_HEIGHT, TILE_WIDTH, entry_bundle, hash_within_tile, node_to_tile

__all__ = ["Problem", "TransparencyLog", "VerificationReport", "verify_log"]


class _TileNodes:
    """Perfect-subtree hashes of a stored tree, read from hash tiles (full tiles cached with all
    their inner levels)."""

    def __init__(self, read_tile: Callable[[int, int], bytes | None], cache_size: int = 256) -> None:
        self._read_tile = read_tile
        self._cache: OrderedDict[TileKey, list[list[bytes]]] = OrderedDict()
        self._cache_size = cache_size

    def _full_levels(self, key: TileKey, tile: bytes) -> list[list[bytes]]:
        levels = self._cache.get(key)
        if levels is not None:
            self._cache.move_to_end(key)
            return levels
        row = [tile[i : i + HASH_SIZE] for i in range(0, len(tile), HASH_SIZE)]
        levels = [row]
        while len(row) > 1:
            row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
            levels.append(row)
        self._cache[key] = levels
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return levels

    def node(self, level: int, index: int) -> bytes:
        c = node_to_tile(level, index)
        key = (c.tile_level, c.tile_index)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[c.node_level][c.node_index]
        tile = self._read_tile(*key)
        if tile is None:
            raise LedgerIntegrityError(f"hash tile {key} is missing", reason="tile_missing")
        if len(tile) == TILE_WIDTH * HASH_SIZE:
            return self._full_levels(key, tile)[c.node_level][c.node_index]
        if c.node_level == 0:
            start = c.node_index * HASH_SIZE
            if start + HASH_SIZE > len(tile):
                raise LedgerIntegrityError(f"hash tile {key} is too short", reason="tile_too_short")
            return tile[start : start + HASH_SIZE]
        return hash_within_tile(tile, c.node_level, c.node_index)

    def hash_range(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` from perfect subtrees (one split per imperfect right edge)."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            return self.node(level, start >> level)
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self.hash_range(start, start + k), self.hash_range(start + k, end))

    def forget(self, key: TileKey) -> None:
        self._cache.pop(key, None)


class TransparencyLog:
    """An append-only RFC 9162 log over a :class:`LogStore`, issuing C2SP signed checkpoints.

    Parameters
    ----------
    store:
        Where entries, tiles and checkpoints live; may already hold a log (it is resumed).
    origin:
        The checkpoint origin line (e.g. ``"qflare.example/ledger"``).
    signer:
        Signs checkpoints (the enclave's :class:`NoteSigner`); needed only for :meth:`checkpoint`.
    tile_cache_size:
        How many full tiles (with their inner levels, about 33 KB each) to keep in memory.
    """

    def __init__(
        self, store: LogStore, *, origin: str, signer: NoteSigner | None = None, tile_cache_size: int = 256
    ) -> None:
        self._store = store
        self._origin = origin
        self._signer = signer
        self._edge: dict[int, tuple[int, bytes]] = {}  # tile level -> (index, bytes) of the rightmost tile
        self._nodes = _TileNodes(self._read_tile, tile_cache_size)
        self._range = CompactRange()
        self.refresh()

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def store(self) -> LogStore:
        return self._store

    def refresh(self) -> None:
        """Reload the tree state from the store (after another writer appended)."""
        size = self._store.size()
        self._edge.clear()
        self._range = CompactRange(size, [self._nodes.node(lv, ix) for lv, ix in perfect_subtrees(size)])

    def _read_tile(self, level: int, index: int) -> bytes | None:
        edge = self._edge.get(level)
        if edge is not None and edge[0] == index:
            return edge[1]
        return self._store.read_tile(level, index)

    def size(self) -> int:
        """The current number of entries."""
        return self._range.size

    def _check_size(self, size: int | None, *, allow_zero: bool = True) -> int:
        current = self._range.size
        s = current if size is None else size
        if not (0 if allow_zero else 1) <= s <= current:
            raise InvalidInput(f"tree size {s} not in [1, {current}]", reason="tree_size_out_of_range")
        return s

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` entries (default: all)."""
        s = self._check_size(size)
        if s == self._range.size:
            return self._range.root()
        return EMPTY_ROOT if s == 0 else self._nodes.hash_range(0, s)

    def append(self, entries: Sequence[bytes]) -> int:
        """Append a batch of entries atomically; return the index of the first.

        Raises
        ------
        qflare.errors.Conflict
            ``log_size_mismatch`` if the store grew behind this object (call :meth:`refresh`).
        """
        start = self._range.size
        entries = [bytes(e) for e in entries]
        if not entries:
            return start
        hashes = [leaf_hash(e) for e in entries]
        cr = self._range.copy()
        pending: dict[int, tuple[int, bytearray]] = {}
        touched: dict[TileKey, bytearray] = {}

        def on_node(level: int, index: int, h: bytes) -> None:
            if level % TILE_HEIGHT:
                return
            tl, ti, pos = level // TILE_HEIGHT, index // TILE_WIDTH, index % TILE_WIDTH
            cur = pending.get(tl)
            if cur is None or cur[0] != ti:
                if pos == 0:
                    cur = (ti, bytearray())
                else:
                    old = self._read_tile(tl, ti)
                    if old is None or len(old) != pos * HASH_SIZE:
                        raise LedgerIntegrityError(
                            f"hash tile {(tl, ti)} does not match the log", reason="tile_missing"
                        )
                    cur = (ti, bytearray(old))
                pending[tl] = cur
                touched.setdefault((tl, ti), cur[1])
            cur[1].extend(h)

        cr.extend(hashes, on_node)
        tiles = {k: bytes(v) for k, v in touched.items()}
        self._store.append(start, entries, hashes, tiles)
        self._range = cr
        for tl, (ti, data) in pending.items():
            self._edge[tl] = (ti, bytes(data))
        for key in tiles:
            self._nodes.forget(key)
        return start

    def append_events(self, events: Sequence[LedgerEvent]) -> int:
        """Encode QFLARE events (:mod:`qflare.ledger.entries`) and append them as one batch."""
        return self.append([encode_event(e) for e in events])

    def checkpoint(self) -> bytes:
        """Sign, store and return a checkpoint note for the current size.

        Raises
        ------
        qflare.errors.ConfigError
            ``no_signer`` if the log was opened without a signer.
        """
        if self._signer is None:
            raise ConfigError("this log has no checkpoint signer", reason="no_signer")
        body = Checkpoint(self._origin, self._range.size, self._range.root()).to_body()
        note = sign_note(body, [self._signer])
        self._store.add_checkpoint(self._range.size, note)
        return note

    def latest_checkpoint(self) -> bytes | None:
        """The last stored checkpoint note, if any."""
        latest = self._store.latest_checkpoint()
        return None if latest is None else latest.note

    def entry(self, index: int) -> bytes:
        """The entry at ``index``; :class:`NotFound` (``entry_not_found``) outside the log."""
        if not 0 <= index < self._range.size:
            raise NotFound(f"no entry {index} in a log of {self._range.size}", reason="entry_not_found")
        return self._store.read_entries(index, index + 1)[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` (default: current)."""
        s = self._check_size(size, allow_zero=False)
        if not 0 <= index < s:
            raise InvalidInput(f"leaf index {index} not in tree of size {s}", reason="index_out_of_range")
        return inclusion_proof(index, s, self._nodes.hash_range)

    def prove_inclusion(self, leaf_hash_: bytes, size: int | None = None) -> tuple[int, list[bytes]]:
        """``(index, audit path)`` for a leaf hash in the tree of ``size`` (default: current)."""
        s = self._check_size(size, allow_zero=False)
        index = self._store.find_leaf(bytes(leaf_hash_))
        if index is None:
            raise NotFound("leaf hash is not in the log", reason="leaf_not_found")
        if index >= s:
            raise NotFound(f"leaf {index} is not in the tree of size {s}", reason="leaf_not_in_tree")
        return index, inclusion_proof(index, s, self._nodes.hash_range)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Proof that the tree of ``size1`` is a prefix of the tree of ``size2`` (default: current)."""
        s2 = self._check_size(size2, allow_zero=False)
        if not 1 <= size1 <= s2:
            raise InvalidInput(f"size1 {size1} not in [1, {s2}]", reason="tree_size_out_of_range")
        return consistency_proof(size1, s2, self._nodes.hash_range)

    def tile(self, level: int, index: int, width: int = 0) -> bytes:
        """Hash tile bytes for tlog-tiles serving (``width`` 0 = full); :class:`NotFound` if not there yet."""
        data = self._read_tile(level, index)
        want = (width or TILE_WIDTH) * HASH_SIZE
        if data is None or len(data) < want or not 0 <= width < TILE_WIDTH:
            raise NotFound(f"tile {level}/{index} width {width} not available", reason="tile_not_found")
        return data[:want]

    def entry_bundle(self, index: int, width: int = 0) -> bytes:
        """Entry bundle ``index`` (``width`` 0 = full) for tlog-tiles serving."""
        start = index * TILE_WIDTH
        end = start + (width or TILE_WIDTH)
        if index < 0 or not 0 <= width < TILE_WIDTH or end > self._range.size:
            raise NotFound(f"entry bundle {index} width {width} not available", reason="tile_not_found")
        return entry_bundle(self._store.read_entries(start, end))


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :func:`verify_log`: a stable ``reason``, the entry ``index`` it concerns (the
    first possibly bad index when only a range is known) and/or the ``checkpoint`` sequence number."""

    reason: str
    message: str
    index: int | None = None
    checkpoint: int | None = None
    exact: bool = True
    """False when ``index`` is only the start of the range the bad entry lies in."""


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What :func:`verify_log` found.

    ``ok`` is true only if there are no problems. ``first_bad_index`` is the lowest entry index any
    problem points at (``None`` if no entry is implicated).
    """

    size: int
    checkpoints_checked: int
    problems: list[Problem] = field(default_factory=list)
    signed_entries: int = 0
    """Entries whose producer signature verified (only counted with ``entry_key``)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_index(self) -> int | None:
        exact = [p.index for p in self.problems if p.index is not None and p.exact]
        bounds = [p.index for p in self.problems if p.index is not None]
        return min(exact) if exact else min(bounds) if bounds else None

    @property
    def reasons(self) -> list[str]:
        return [p.reason for p in self.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`LedgerIntegrityError` with the first problem's reason, if any."""
        if self.problems:
            first = self.problems[0]
            raise LedgerIntegrityError(first.message, reason=first.reason)


_CHUNK = 4096
_MAX_ENTRY_PROBLEMS = 100


def verify_log(
    store: LogStore,
    verifiers: HybridLogKey | Sequence[NoteVerifier],
    *,
    origin: str | None = None,
    entry_key: VerifyKey | None = None,
) -> VerificationReport:
    """Check a whole stored log from scratch (backs ``qflare ledger verify``).

    Recomputes every leaf hash from the stored entry bytes and compares it with the stored hash and
    the hash tiles; recomputes the root at every checkpoint size; checks every checkpoint's
    signatures (with a :class:`HybridLogKey`, both halves are required), origin, size and root; and
    checks each step between consecutive checkpoints: no rollback, no fork (same size, other root),
    and a consistency proof served from the stored tiles that verifies between their roots.

    With ``entry_key`` (the log's composite key, :meth:`HybridLogKey.verify_key`; ``qflare ledger
    verify`` passes it, a generic tlog is checked without) every entry must also decode as a QFLARE
    event (``malformed_entry`` and the other :func:`~qflare.ledger.entries.decode_event` reasons),
    and every ``update_accepted`` and
    ``aggregate_published`` entry must carry a producer signature under that key (``unsigned_entry``,
    ``invalid_entry_signature``): with an enclave, the log key is the enclave's, so the host cannot
    add an update or an aggregate the enclave did not produce.

    Never raises for a bad log: every finding is a :class:`Problem` in the report.
    """
    problems: list[Problem] = []
    n = store.size()
    stored_cps = store.read_checkpoints()
    wanted = {c.size for c in stored_cps}
    roots: dict[int, bytes] = {0: EMPTY_ROOT}
    cr = CompactRange()
    tile_rows: dict[TileKey, bytes | None] = {}
    entry_problems = 0
    signed = 0

    def report(
        reason: str, message: str, index: int | None = None, checkpoint: int | None = None, exact: bool = True
    ) -> None:
        problems.append(Problem(reason, message, index, checkpoint, exact))

    def on_node(level: int, index: int, h: bytes) -> None:
        nonlocal entry_problems
        if level % TILE_HEIGHT:
            return
        key = (level // TILE_HEIGHT, index // TILE_WIDTH)
        if key not in tile_rows:
            tile_rows.clear()  # tiles are visited left to right: keep only the current ones
            tile_rows[key] = store.read_tile(*key)
        tile = tile_rows[key]
        pos = (index % TILE_WIDTH) * HASH_SIZE
        if (tile is None or tile[pos : pos + HASH_SIZE] != h) and entry_problems < _MAX_ENTRY_PROBLEMS:
            entry_problems += 1
            first_leaf = index << level
            # A level-0 tile names the exact entry; a higher tile only the subtree it covers.
            report(
                "tile_mismatch",
                f"hash tile {key} disagrees with the entries at index {first_leaf}",
                first_leaf,
                exact=level == 0,
            )

    complete = True
    for start in range(0, n, _CHUNK):
        end = min(n, start + _CHUNK)
        entries = store.read_entries(start, end)
        stored = store.read_leaf_hashes(start, end)
        for i, (entry, sh) in enumerate(zip(entries, stored, strict=False)):
            h = leaf_hash(entry)
            if h != sh and entry_problems < _MAX_ENTRY_PROBLEMS:
                entry_problems += 1
                report("leaf_hash_mismatch", f"entry {start + i} does not hash to its stored leaf hash", start + i)
            if entry_key is not None and entry_problems < _MAX_ENTRY_PROBLEMS:
                try:
                    event = decode_event(entry)
                    verify_entry(event, entry_key)
                    signed += isinstance(event, SIGNED_EVENTS)
                except (MalformedPayload, LedgerIntegrityError) as exc:
                    entry_problems += 1
                    report(exc.reason, f"entry {start + i}: {exc.message}", start + i)
            cr.append(h, on_node)
            if cr.size in wanted:
                roots[cr.size] = cr.root()
        if len(entries) != end - start or len(stored) != end - start:
            report("missing_entry", f"the store returned too few rows from index {start}", cr.size)
            complete = False
            break
    n_checked = cr.size

    nodes = _TileNodes(store.read_tile)
    prev: tuple[int, Checkpoint] | None = None
    last_good_size = 0
    for seq, stored_cp in enumerate(stored_cps):
        try:
            if isinstance(verifiers, HybridLogKey):
                note: Note = verifiers.open(stored_cp.note)
            else:
                note = open_note(stored_cp.note, verifiers)
            cp = parse_checkpoint(note.text, origin=origin)
        except LedgerIntegrityError as exc:
            report(exc.reason, f"checkpoint {seq}: {exc.message}", checkpoint=seq)
            continue
        origin = cp.origin if origin is None else origin
        if cp.size != stored_cp.size:
            report("checkpoint_size_mismatch", f"checkpoint {seq} is stored as size {stored_cp.size}", checkpoint=seq)
        if cp.size > n_checked:
            report("checkpoint_beyond_log", f"checkpoint {seq} has size {cp.size}, the log {n_checked}", n_checked, seq)
        elif roots.get(cp.size) != cp.root:
            report(
                "checkpoint_root_mismatch",
                f"checkpoint {seq} root differs from the recomputed root: an entry in "
                f"[{last_good_size}, {cp.size}) was changed",
                last_good_size,
                seq,
                exact=False,
            )
        else:
            last_good_size = max(last_good_size, cp.size)
        if prev is not None:
            pseq, pcp = prev
            if cp.size < pcp.size:
                report(
                    "checkpoint_rollback", f"checkpoint {seq} (size {cp.size}) follows size {pcp.size}", checkpoint=seq
                )
                continue
            if cp.size == pcp.size and cp.root != pcp.root:
                report(
                    "checkpoint_fork",
                    f"checkpoints {pseq} and {seq} have size {cp.size} and different roots",
                    checkpoint=seq,
                )
                continue
            if 0 < pcp.size < cp.size <= n_checked and complete:
                try:
                    proof = consistency_proof(pcp.size, cp.size, nodes.hash_range)
                    verify_consistency(pcp.size, cp.size, proof, pcp.root, cp.root)
                except LedgerIntegrityError as exc:
                    report("inconsistent_checkpoints", f"checkpoints {pseq} -> {seq}: {exc.message}", checkpoint=seq)
        prev = (seq, cp)
    return VerificationReport(n_checked, len(stored_cps), problems, signed)
