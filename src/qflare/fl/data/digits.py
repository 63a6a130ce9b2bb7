"""The 8x8 handwritten digits shipped with scikit-learn (no download), split and scaled."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["DigitsSplit", "digits_split"]


@dataclass(frozen=True, eq=False)
class DigitsSplit:
    """A stratified train/test split; images float32 ``(n, 1, 8, 8)`` in [0, 1], labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@lru_cache(maxsize=4)
def digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """1797 images; ``test_fraction`` of each class held out, chosen by ``seed``.

    Cached: callers must not modify the arrays in place.
    """
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    for array in (x_train, x_test, y_train, y_test):
        array.setflags(write=False)
    return DigitsSplit(x_train, y_train, x_test, y_test)
