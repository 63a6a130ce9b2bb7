"""Shared fixtures for the federated-learning tests. The machine is shared: one torch thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``."""
    return DATA_DIR


@pytest.fixture
def small_arrays() -> dict[str, np.ndarray]:
    """A two-tensor float32 model state in a fixed, non-alphabetical order."""
    rng = np.random.default_rng(0)
    return {
        "layer.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "bias": rng.normal(size=(3,)).astype(np.float32),
    }
