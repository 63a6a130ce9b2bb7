"""Partitioners: disjoint, covering, non-empty, deterministic, and skewed when asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qflare.errors import ConfigError
from qflare.fl.data.partition import default_min_size, dirichlet_partition, group_partition, iid_partition


def _assert_is_partition(parts: list[np.ndarray], n_samples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n_samples
    np.testing.assert_array_equal(np.sort(joined), np.arange(n_samples))
    for part in parts:
        assert part.dtype == np.int64
        np.testing.assert_array_equal(part, np.sort(part))


@settings(max_examples=60, deadline=None)
@given(n_parts=st.integers(1, 20), extra=st.integers(0, 500), seed=st.integers(0, 2**32 - 1))
def test_iid_partition_is_balanced_partition(n_parts: int, extra: int, seed: int) -> None:
    # Prepare
    n_samples = n_parts + extra

    # Execute
    parts = iid_partition(n_samples, n_parts, seed)

    # Assert
    _assert_is_partition(parts, n_samples)
    sizes = [len(p) for p in parts]
    assert len(parts) == n_parts and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(2, 10),
    per_class=st.integers(20, 60),
    n_parts=st.integers(2, 10),
    alpha=st.sampled_from([0.1, 0.5, 1.0, 100.0]),
    seed=st.integers(0, 10_000),
)
def test_dirichlet_partition_is_partition_with_min_size(
    n_classes: int, per_class: int, n_parts: int, alpha: float, seed: int
) -> None:
    # Prepare
    labels = np.repeat(np.arange(n_classes), per_class)
    min_size = 5
    assume(len(labels) >= n_parts * min_size)

    # Execute: a draw that misses min_size is rebalanced, never refused
    parts = dirichlet_partition(labels, n_parts, alpha, seed, min_size=min_size)

    # Assert
    _assert_is_partition(parts, len(labels))
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_partition_is_deterministic_and_seed_dependent() -> None:
    # Prepare
    labels = np.repeat(np.arange(10), 100)

    # Execute
    first = dirichlet_partition(labels, 10, 0.5, seed=3)
    again = dirichlet_partition(labels, 10, 0.5, seed=3)
    other = dirichlet_partition(labels, 10, 0.5, seed=4)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    # Prepare
    labels = np.repeat(np.arange(10), 100)

    def mean_dominant_share(alpha: float) -> float:
        parts = dirichlet_partition(labels, 10, alpha, seed=0)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    # Execute
    skewed, near_iid = mean_dominant_share(0.1), mean_dominant_share(100.0)

    # Assert: with alpha=0.1 a client's top class is most of its data; with 100 about a tenth
    assert skewed > 0.5
    assert near_iid < 0.2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid_partition(3, 5, 0), "cannot split 3 samples into 5 parts"),
        (lambda: iid_partition(10, 0, 0), "into 0 parts"),
        (lambda: dirichlet_partition(np.zeros(30), 4, 0.0, 0), "alpha must be positive"),
        (lambda: dirichlet_partition(np.zeros(30), 4, 0.5, 0, min_size=10), "at least 10"),
        (lambda: dirichlet_partition(np.zeros((3, 3)), 2, 0.5, 0), "one-dimensional"),
        (lambda: group_partition(np.array([0, 0, 1, 1]), 3), "2 groups into 3"),
    ],
)
def test_impossible_partitions_raise_config_error(call, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert info.value.reason == "invalid_partition"


def test_group_partition_keeps_groups_whole() -> None:
    # Prepare: samples of 5 sensors, interleaved
    groups = np.tile(np.arange(5), 7)

    # Execute
    one_each = group_partition(groups, 5)
    two_parts = group_partition(groups, 2)

    # Assert
    _assert_is_partition(one_each, len(groups))
    assert [set(groups[p]) for p in one_each] == [{0}, {1}, {2}, {3}, {4}]
    assert [set(groups[p]) for p in two_parts] == [{0, 1, 2}, {3, 4}]


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(1, 10),
    n_samples=st.integers(1, 2000),
    n_parts=st.integers(1, 2000),
    alpha=st.sampled_from([0.05, 0.5, 100.0]),
    seed=st.integers(0, 10_000),
)
def test_default_dirichlet_serves_any_client_count_the_data_can(
    n_classes: int, n_samples: int, n_parts: int, alpha: float, seed: int
) -> None:
    # Prepare
    assume(n_parts <= n_samples)
    labels = np.arange(n_samples) % n_classes

    # Execute
    parts = dirichlet_partition(labels, n_parts, alpha, seed)

    # Assert
    _assert_is_partition(parts, n_samples)
    assert len(parts) == n_parts and min(len(p) for p in parts) >= default_min_size(n_samples, n_parts) >= 1


@pytest.mark.parametrize(("clients", "minimum"), [(10, 10), (100, 7), (200, 3), (1000, 1)])
def test_digits_split_into_100_and_1000_clients(clients: int, minimum: int) -> None:
    # Prepare: issue 13: 100 clients failed with invalid_partition (a minimum of 10 each)
    from qflare.fl.data.digits import digits_split

    labels = digits_split(0, 0.2).y_train

    # Execute
    parts = dirichlet_partition(labels, clients, 0.5, seed=0)

    # Assert: still label-skewed, every client has data
    _assert_is_partition(parts, len(labels))
    assert default_min_size(len(labels), clients) == minimum
    assert min(len(p) for p in parts) >= minimum


def test_default_min_size_is_ten_when_affordable_and_never_zero() -> None:
    assert default_min_size(10_000, 10) == 10
    assert default_min_size(1437, 100) == 7
    assert default_min_size(5, 5) == 1


def test_more_clients_than_samples_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match="cannot split 1437 samples into 1500 parts") as info:
        dirichlet_partition(np.zeros(1437), 1500, 0.5, 0)
    assert info.value.reason == "invalid_partition"


def test_simulate_checks_the_split_before_starting_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    from qflare.sim.runner import SimulationConfig, check_partition

    fine = SimulationConfig(task="digits", clients=100, partition="dirichlet", runs_dir=tmp_path)
    too_many = SimulationConfig(task="digits", clients=2000, partition="dirichlet", runs_dir=tmp_path)

    # Execute / Assert: 100 clients split; 2000 are refused with the numbers, and no run directory exists
    check_partition(fine)
    with pytest.raises(ConfigError, match="cannot split 1437 samples into 2000 parts"):
        check_partition(too_many)
    assert not any(tmp_path.iterdir())
