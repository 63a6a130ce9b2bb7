"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_environment_snapshot() -> None:
    # qflare.environment reads the environment once; a test's monkeypatch.setenv must be seen.
    from qflare.environment import environment

    environment.cache_clear()
