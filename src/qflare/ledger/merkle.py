"""RFC 9162 Merkle Tree Hash, compact ranges, proof generation and proof verification.

Hashing is RFC 9162 section 2.1.1 (identical to RFC 6962 section 2.1) with SHA-256: a leaf hash is
``SHA-256(0x00 || leaf)``, an interior node ``SHA-256(0x01 || left || right)``, and the hash of the
empty tree ``SHA-256("")``. The two prefixes separate the leaf and node domains, so no leaf can be
passed off as an interior node (second-preimage resistance).

Proof generation follows RFC 9162 2.1.3.1 (``PATH``) and 2.1.4.1 (``PROOF`` / ``SUBPROOF``), over a
``hash_range(start, end)`` callback that returns ``MTH(D[start:end])``; the log answers it from stored
perfect-subtree hashes (hash tiles), so a proof costs O(log n) lookups and never rebuilds the tree.
Verification follows RFC 9162 2.1.3.2 and 2.1.4.2 and raises :class:`LedgerIntegrityError` with a
stable ``reason`` on every failure; it never returns ``False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from qflare.errors import LedgerIntegrityError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "HashRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "perfect_subtrees",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

_LEAF_HASH_PREFIX: Final = b"\x00"
"""RFC 9162 2.1.1: the leaf hash is ``HASH(0x00 || d(0))``."""
_NODE_HASH_PREFIX: Final = b"\x01"
"""RFC 9162 2.1.1: an interior node is ``HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``."""

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""RFC 9162 2.1.1: ``MTH({}) = SHA-256()``, the hash of the empty tree."""

HashRange = Callable[[int, int], bytes]
"""``hash_range(start, end) -> MTH(D[start:end])`` for ``0 <= start < end <= tree size``."""

_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 2.1.1 leaf hash: ``SHA-256(0x00 || leaf)``."""
    return _sha256(_LEAF_HASH_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_HASH_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two ``k`` with ``k < n`` (RFC 9162 2.1.1), for ``n > 1``."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The compact range of a tree of size ``n``: the roots of its perfect subtrees, left to right.

    Appending a leaf merges equal-height subtrees, so each append costs O(1) amortised and O(log n)
    worst case; :meth:`root` folds the subtrees right to left in O(log n). This is the state a log
    needs to keep its root current without holding the whole tree.

    Parameters
    ----------
    size:
        The tree size the ``hashes`` describe (0 for an empty tree).
    hashes:
        The perfect-subtree roots for ``size``, largest (leftmost) first; one per set bit of ``size``.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise LedgerIntegrityError("compact range does not match its size", reason="bad_compact_range")
        self._size = size
        self._hashes = list(hashes)

    @property
    def size(self) -> int:
        """The number of leaves covered."""
        return self._size

    def hashes(self) -> list[bytes]:
        """The perfect-subtree roots, leftmost (largest) first."""
        return list(self._hashes)

    def append(self, leaf_hash_: bytes, on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        """Append one leaf hash. ``on_node(level, index, hash)`` is called for the leaf (level 0) and
        for every perfect subtree the append completes, bottom-up."""
        index = self._size
        h = leaf_hash_
        if on_node is not None:
            on_node(0, index, h)
        level = 0
        hashes = self._hashes
        # The new leaf closes one perfect subtree per trailing one bit of its index.
        while (index >> level) & 1:
            h = node_hash(hashes.pop(), h)
            level += 1
            if on_node is not None:
                on_node(level, index >> level, h)
        hashes.append(h)
        self._size = index + 1

    def extend(self, leaf_hashes: Iterable[bytes], on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        """Append leaf hashes in order (see :meth:`append`)."""
        for h in leaf_hashes:
            self.append(h, on_node)

    def root(self) -> bytes:
        """``MTH`` of the covered leaves (``EMPTY_ROOT`` for size 0)."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self._size, self._hashes)


def perfect_subtrees(size: int) -> list[tuple[int, int]]:
    """``(level, index)`` of the perfect subtrees of a tree of ``size``, left to right (its compact range)."""
    out = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """``MTH`` (RFC 9162 2.1.1) of a sequence of leaf hashes."""
    cr = CompactRange()
    cr.extend(leaf_hashes)
    return cr.root()


def _check_size(size: int, what: str) -> None:
    if size < 0:
        raise LedgerIntegrityError(f"{what} must not be negative", reason="invalid_tree_size")


def inclusion_proof(index: int, size: int, hash_range: HashRange) -> list[bytes]:
    """RFC 9162 2.1.3.1 ``PATH(m, D[n])``: the audit path of leaf ``index`` in a tree of ``size``, bottom-up.

    Raises
    ------
    LedgerIntegrityError
        ``index_out_of_range`` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise LedgerIntegrityError(f"leaf index {index} not in tree of size {size}", reason="index_out_of_range")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # Walk down from the root; collect the sibling subtree at each split, then reverse (bottom-up).
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if m < k:
            path.append(hash_range(start + k, end))
            end = start + k
        else:
            path.append(hash_range(start, start + k))
            start += k
            m -= k
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, hash_range: HashRange) -> list[bytes]:
    """RFC 9162 2.1.4.1 ``PROOF(m, D[n])``: proof that the tree of ``size1`` is a prefix of ``size2``.

    Raises
    ------
    LedgerIntegrityError
        ``invalid_tree_size`` unless ``0 < size1 <= size2`` (size1 = 0 proves nothing; see
        :func:`verify_consistency`).
    """
    if not 0 < size1 <= size2:
        raise LedgerIntegrityError(f"no consistency proof from size {size1} to {size2}", reason="invalid_tree_size")
    if size1 == size2:
        return []
    # SUBPROOF(m, D[start:end], b), unrolled: the walk is a single path down the tree.
    proof: list[bytes] = []
    start, end, m, b = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not b:
                proof.append(hash_range(start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(hash_range(start + k, end))
            end = start + k
        else:
            proof.append(hash_range(start, start + k))
            start += k
            m -= k
            b = False
    proof.reverse()
    return proof


def _check_hash(value: bytes, reason: str, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise LedgerIntegrityError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}", reason=reason)


def verify_inclusion(leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Verify an inclusion proof (RFC 9162 2.1.3.2); return ``None`` or raise.

    Raises
    ------
    LedgerIntegrityError
        ``index_out_of_range`` (``index >= size``), ``bad_hash_size`` (a leaf hash, root or proof
        element that is not 32 bytes), ``bad_proof_length`` (too few or too many elements) or
        ``root_mismatch`` (the proof leads to another root).
    """
    _check_size(size, "tree size")
    if not 0 <= index < size:
        raise LedgerIntegrityError(f"leaf index {index} not in tree of size {size}", reason="index_out_of_range")
    _check_hash(leaf_hash_, "bad_hash_size", "leaf hash")
    _check_hash(root, "bad_hash_size", "root")
    for p in proof:
        _check_hash(p, "bad_hash_size", "proof element")
    fn, sn, r = index, size - 1, leaf_hash_
    for p in proof:
        if sn == 0:
            raise LedgerIntegrityError("inclusion proof has too many elements", reason="bad_proof_length")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerIntegrityError("inclusion proof has too few elements", reason="bad_proof_length")
    if r != root:
        raise LedgerIntegrityError("inclusion proof does not lead to the root", reason="root_mismatch")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Verify a consistency proof (RFC 9162 2.1.4.2); return ``None`` or raise.

    Policy (the transparency-dev/merkle probes): ``size1 = 0`` is always an error (it proves nothing,
    even 0 -> 0); ``size1 == size2 > 0`` passes only with an empty proof and equal roots.

    Raises
    ------
    LedgerIntegrityError
        ``invalid_tree_size`` (size1 = 0, negative, or size1 > size2), ``bad_hash_size``,
        ``bad_proof_length`` (including a non-empty proof for equal sizes), ``root_mismatch``.
    """
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if size1 == 0:
        raise LedgerIntegrityError("consistency from an empty tree proves nothing", reason="invalid_tree_size")
    if size1 > size2:
        raise LedgerIntegrityError(f"size1 {size1} is larger than size2 {size2}", reason="invalid_tree_size")
    for p in proof:
        _check_hash(p, "bad_hash_size", "proof element")
    if size1 == size2:
        # As the reference verifier: equal sizes compare the roots as given (no length rule).
        if proof:
            raise LedgerIntegrityError("equal sizes need an empty proof", reason="bad_proof_length")
        if root1 != root2:
            raise LedgerIntegrityError("equal sizes with different roots", reason="root_mismatch")
        return
    _check_hash(root1, "bad_hash_size", "root1")
    _check_hash(root2, "bad_hash_size", "root2")
    if not proof:
        raise LedgerIntegrityError("empty consistency proof", reason="bad_proof_length")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is an exact power of two: its root is a node of tree 2
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LedgerIntegrityError("consistency proof has too many elements", reason="bad_proof_length")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerIntegrityError("consistency proof has too few elements", reason="bad_proof_length")
    if fr != root1:
        raise LedgerIntegrityError("consistency proof does not lead to root1", reason="root_mismatch")
    if sr != root2:
        raise LedgerIntegrityError("consistency proof does not lead to root2", reason="root_mismatch")
