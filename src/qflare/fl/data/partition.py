"""Split a data set across clients: pure numpy, deterministic for a seed.

Every partitioner returns a list of ``n_parts`` sorted int64 index arrays that are disjoint and
together cover all samples.
"""

from __future__ import annotations

import numpy as np

from qflare.errors import ConfigError

__all__ = ["dirichlet_partition", "group_partition", "iid_partition"]


def iid_partition(n_samples: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into ``n_parts`` parts whose sizes differ by at most one."""
    _check_parts(n_samples, n_parts, min_size=1)
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def dirichlet_partition(
    labels: np.ndarray,
    n_parts: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared out in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` (0.1) gives each client a few dominant classes; large (100) approaches IID.
    As in Hsu et al. (2019) and Flower Datasets' ``DirichletPartitioner``, a part that already
    holds its fair share (``n / n_parts``) gets no more of later classes, and the draw is repeated
    (with the same generator, so still deterministic) until every part has ``min_size`` samples.

    Raises
    ------
    ConfigError
        reason ``invalid_partition`` for impossible arguments, or when ``max_attempts`` draws
        all leave some part below ``min_size`` (lower ``min_size`` or raise ``alpha``).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError("labels must be one-dimensional", reason="invalid_partition")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}", reason="invalid_partition")
    _check_parts(len(labels), n_parts, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    fair_share = len(labels) / n_parts
    for _ in range(max_attempts):
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
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise ConfigError(
        f"no Dirichlet({alpha}) split of {len(labels)} samples into {n_parts} parts gave every part "
        f"{min_size} samples in {max_attempts} attempts",
        reason="invalid_partition",
    )


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
