"""Split a data set across clients: pure numpy, deterministic for a seed.

Every partitioner returns a list of ``n_parts`` sorted int64 index arrays that are disjoint and
together cover all samples.
"""

from __future__ import annotations

import numpy as np

from qflare.errors import ConfigError

__all__ = ["DEFAULT_MIN_SIZE", "default_min_size", "dirichlet_partition", "group_partition", "iid_partition"]


def iid_partition(n_samples: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into ``n_parts`` parts whose sizes differ by at most one."""
    _check_parts(n_samples, n_parts, min_size=1)
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


DEFAULT_MIN_SIZE = 10
"""The per-client minimum of a Dirichlet split when the data can afford it (see :func:`default_min_size`)."""


def default_min_size(n_samples: int, n_parts: int) -> int:
    """``min(10, n_samples // (2 * n_parts))``, at least 1: ten samples per client when there is data for it.

    Half the fair share at most, so that a skewed draw is rarely held back; with 1437 digits images and
    100 clients that is 7, with 1000 clients 1.
    """
    return max(1, min(DEFAULT_MIN_SIZE, n_samples // (2 * max(n_parts, 1))))


def dirichlet_partition(
    labels: np.ndarray,
    n_parts: int,
    alpha: float,
    seed: int,
    *,
    min_size: int | None = None,
    max_attempts: int = 20,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared out in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` (0.1) gives each client a few dominant classes; large (100) approaches IID.
    As in Hsu et al. (2019) and Flower Datasets' ``DirichletPartitioner``, a part that already
    holds its fair share (``n / n_parts``) gets no more of later classes, and the draw is repeated
    (with the same generator, so still deterministic) until every part has ``min_size`` samples.
    If no draw gets there in ``max_attempts``, the draw with the smallest shortfall is rebalanced:
    parts below ``min_size`` take samples from the largest parts (random ones, from the same
    generator), which keeps the label skew of all but a few samples.

    ``min_size`` defaults to :func:`default_min_size`, so every client count the data can serve
    (``n_samples >= n_parts``) works.

    Raises
    ------
    ConfigError
        reason ``invalid_partition`` for impossible arguments: not one-dimensional labels, a
        non-positive ``alpha``, or fewer than ``n_parts * min_size`` samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError("labels must be one-dimensional", reason="invalid_partition")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}", reason="invalid_partition")
    if min_size is None:
        min_size = default_min_size(len(labels), n_parts)
    _check_parts(len(labels), n_parts, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    fair_share = len(labels) / n_parts
    best: list[np.ndarray] | None = None
    best_shortfall = -1
    for _ in range(max(1, max_attempts)):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        sizes = np.zeros(n_parts, dtype=np.int64)
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            share = rng.dirichlet(np.full(n_parts, alpha))
            share = share * (sizes < fair_share)
            share = share / share.sum() if share.sum() > 0 else np.full(n_parts, 1 / n_parts)
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(np.int64)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        joined = [np.concatenate(p).astype(np.int64) for p in parts]
        if sizes.min() >= min_size:
            return [np.sort(p) for p in joined]
        shortfall = int(np.maximum(min_size - sizes, 0).sum())
        if best is None or shortfall < best_shortfall:
            best, best_shortfall = joined, shortfall
    assert best is not None
    return [np.sort(p) for p in _rebalance(best, min_size, rng)]


def _rebalance(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move random samples from the largest parts to those below ``min_size`` (total >= n_parts * min_size)."""
    parts = [rng.permutation(p) for p in parts]
    for k in range(len(parts)):
        while len(parts[k]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            need = min_size - len(parts[k])
            give = min(need, len(parts[donor]) - min_size)
            assert give > 0, "_check_parts guarantees enough samples"
            parts[k] = np.concatenate([parts[k], parts[donor][:give]])
            parts[donor] = parts[donor][give:]
    return parts


def group_partition(groups: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Keep groups whole: the sorted distinct groups (e.g. sensors) are cut into ``n_parts`` runs.

    ``groups[i]`` is sample ``i``'s group. With as many parts as groups, part ``k`` is exactly
    group ``k``'s samples; with fewer, neighbouring groups share a part.
    """
    groups = np.asarray(groups)
    distinct = np.unique(groups)
    if n_parts < 1 or n_parts > len(distinct):
        raise ConfigError(
            f"cannot split {len(distinct)} groups into {n_parts} non-empty parts", reason="invalid_partition"
        )
    return [np.flatnonzero(np.isin(groups, chunk)).astype(np.int64) for chunk in np.array_split(distinct, n_parts)]


def _check_parts(n_samples: int, n_parts: int, min_size: int) -> None:
    if n_parts < 1 or min_size < 1 or n_samples < n_parts * min_size:
        raise ConfigError(
            f"cannot split {n_samples} samples into {n_parts} parts of at least {min_size}",
            reason="invalid_partition",
        )
