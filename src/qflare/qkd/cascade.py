"""Cascade error correction (Brassard and Salvail, EUROCRYPT '93), vectorised with NumPy.

Bob corrects his sifted key towards Alice's over the public channel. Pass ``i`` shuffles the key with
a public permutation (pass 0 uses the identity), cuts it into blocks of ``k_i = k_1 * 2**i`` bits
(``k_1 = ceil(0.73 / e)`` for the estimated error rate ``e``) and compares block parities; every block
with odd parity difference is bisected (BINARY) to one error, which Bob flips. A flip changes the
parity of the block containing that bit in every earlier pass, so those blocks are bisected in turn
(the cascade) until no block of any finished pass has odd parity difference.

Vectorisation: the blocks of one pass are disjoint, so all odd blocks of a pass are bisected in
lock-step, one level at a time; range parities come from prefix-XOR arrays (Alice's fixed per pass,
Bob's recomputed once per batch). Every parity Alice discloses is counted in ``leaked_bits``:
one per block per pass and one per bisection step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qflare.errors import QKDError

__all__ = ["CascadeResult", "cascade_correct", "initial_block_size"]

Bits = NDArray[np.uint8]
_MIN_QBER_FOR_BLOCKS = 0.002


@dataclass(frozen=True)
class CascadeResult:
    """Bob's corrected key and what it cost.

    Parameters
    ----------
    corrected:
        Bob's key after correction (Alice's key if Cascade succeeded).
    leaked_bits:
        Parity bits disclosed on the public channel.
    flips:
        Bits Bob flipped.
    passes:
        Passes run.
    """

    corrected: Bits
    leaked_bits: int
    flips: int
    passes: int


def initial_block_size(qber: float, n: int) -> int:
    """``ceil(0.73 / e)``, with ``e`` floored at 0.2% and the block at most the key length."""
    e = min(max(qber, _MIN_QBER_FOR_BLOCKS), 0.25)
    return max(2, min(math.ceil(0.73 / e), max(n, 2)))


class _Pass:
    """One Cascade pass: its permutation, block size, Alice's prefix parities and the odd blocks."""

    def __init__(self, order: NDArray[np.int64] | None, block: int, alice: Bits, bob: Bits) -> None:
        n = alice.size
        self.order = order
        self.block = block
        self.position = None if order is None else np.empty(n, dtype=np.int64)
        if order is not None and self.position is not None:
            self.position[order] = np.arange(n, dtype=np.int64)
        self.alice_prefix = _prefix_xor(alice if order is None else alice[order])
        self.n_blocks = -(-n // block)
        starts = np.arange(self.n_blocks, dtype=np.int64) * block
        ends = np.minimum(starts + block, n)
        bob_prefix = self.bob_prefix(bob)
        self.odd = self.alice_prefix[ends] ^ self.alice_prefix[starts] ^ bob_prefix[ends] ^ bob_prefix[starts]

    def bob_prefix(self, bob: Bits) -> Bits:
        return _prefix_xor(bob if self.order is None else bob[self.order])

    def blocks_of(self, indices: NDArray[np.int64]) -> NDArray[np.int64]:
        pos = indices if self.position is None else self.position[indices]
        return pos // self.block

    def original(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        return positions if self.order is None else self.order[positions]


def _prefix_xor(bits: Bits) -> Bits:
    out = np.zeros(bits.size + 1, dtype=np.uint8)
    np.bitwise_xor.accumulate(bits, out=out[1:])
    return out


def _bisect(p: _Pass, blocks: NDArray[np.int64], bob: Bits) -> tuple[NDArray[np.int64], int]:
    """BINARY on all ``blocks`` at once; returns the error positions (original order) and leaked bits."""
    n = bob.size
    lo = blocks * p.block
    hi = np.minimum(lo + p.block, n)
    bob_prefix = p.bob_prefix(bob)
    a = p.alice_prefix
    leaked = 0
    while True:
        active = (hi - lo) > 1
        count = int(np.count_nonzero(active))
        if count == 0:
            break
        mid = (lo + hi) // 2
        # Alice discloses the parity of the left half of every active block.
        left_differs = (a[mid] ^ a[lo] ^ bob_prefix[mid] ^ bob_prefix[lo]).astype(bool)
        leaked += count
        go_left = active & left_differs
        go_right = active & ~left_differs
        hi = np.where(go_left, mid, hi)
        lo = np.where(go_right, mid, lo)
    return p.original(lo), leaked


def cascade_correct(alice: Bits, bob: Bits, qber: float, rng: np.random.Generator, *, passes: int = 4) -> CascadeResult:
    """Run Cascade so that Bob's key converges to Alice's.

    Parameters
    ----------
    alice, bob:
        The two sifted keys (equal length, values 0/1).
    qber:
        Estimated error rate, sets the first block size.
    rng:
        Source of the public permutations.
    passes:
        Number of passes (4 in the original protocol).

    Raises
    ------
    QKDError
        ``reason="ec_input"`` if the keys differ in length.
    """
    if alice.shape != bob.shape:
        raise QKDError("Cascade needs keys of equal length", reason="ec_input")
    n = int(alice.size)
    bob = bob.copy()
    if n == 0:
        return CascadeResult(bob, 0, 0, 0)
    k1 = initial_block_size(qber, n)
    done: list[_Pass] = []
    leaked = 0
    flips = 0
    for i in range(passes):
        block = min(k1 << i, n)
        order = None if i == 0 else rng.permutation(n).astype(np.int64)
        current = _Pass(order, block, alice, bob)
        leaked += current.n_blocks  # Alice discloses every block parity of this pass
        done.append(current)
        while True:
            progressed = False
            for p in reversed(done):
                odd_blocks = np.flatnonzero(p.odd)
                if odd_blocks.size == 0:
                    continue
                errors, cost = _bisect(p, odd_blocks, bob)
                leaked += cost
                flips += int(errors.size)
                bob[errors] ^= 1
                for q in done:  # each flip toggles the parity of its block in every pass so far
                    np.bitwise_xor.at(q.odd, q.blocks_of(errors), 1)
                progressed = True
            if not progressed:
                break
        if block >= n:
            return CascadeResult(bob, leaked, flips, i + 1)
    return CascadeResult(bob, leaked, flips, passes)
