"""Cascade: corrects the errors, only ever flips real errors, counts what it discloses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import QKDError
from qflare.qkd.cascade import cascade_correct, initial_block_size
from qflare.qkd.keyrate import binary_entropy


def _keys(n: int, e: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < e).astype(np.uint8)


@pytest.mark.parametrize(("n", "e"), [(20_000, 0.01), (50_000, 0.03), (50_000, 0.08), (100_000, 0.11)])
def test_cascade_corrects_every_error_and_leaks_near_shannon_limit(n: int, e: float) -> None:
    # Prepare
    alice, bob = _keys(n, e, seed=int(e * 1000))
    errors = int(np.count_nonzero(alice != bob))
    # Execute
    result = cascade_correct(alice, bob, e, np.random.default_rng(1))
    # Assert: Bob now holds Alice's key; leakage is above n h(e) (it must be) and within Cascade's ~1.2x
    assert np.array_equal(result.corrected, alice)
    assert result.flips == errors
    shannon = n * binary_entropy(errors / n)
    assert shannon <= result.leaked_bits <= 1.35 * shannon


def test_cascade_does_not_modify_its_inputs() -> None:
    # Prepare
    alice, bob = _keys(5_000, 0.05, seed=3)
    before = bob.copy()
    # Execute
    cascade_correct(alice, bob, 0.05, np.random.default_rng(0))
    # Assert
    assert np.array_equal(bob, before)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=3000),
    e=st.floats(min_value=0.0, max_value=0.2),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_cascade_only_ever_flips_erroneous_bits(n: int, e: float, seed: int) -> None:
    # Prepare
    alice, bob = _keys(n, e, seed)
    errors = int(np.count_nonzero(alice != bob))
    # Execute
    result = cascade_correct(alice, bob, max(e, 0.01), np.random.default_rng(seed))
    # Assert: each flip fixes an error (BINARY follows odd parity), so none is introduced
    remaining = int(np.count_nonzero(result.corrected != alice))
    assert remaining == errors - result.flips
    assert result.leaked_bits >= result.flips


def test_block_size_follows_the_error_rate() -> None:
    assert initial_block_size(0.01, 10**6) == 73
    assert initial_block_size(0.0, 10**6) == 365  # floored error rate
    assert initial_block_size(0.05, 10) == 10  # never longer than the key


def test_keys_of_different_lengths_are_refused() -> None:
    with pytest.raises(QKDError) as info:
        cascade_correct(np.zeros(4, np.uint8), np.zeros(5, np.uint8), 0.01, np.random.default_rng(0))
    assert info.value.reason == "ec_input"
