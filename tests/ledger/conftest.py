"""Shared helpers for the ledger tests: the reference vectors live in ``tests/vectors/ledger``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ledger"


def load(name: str) -> Any:
    """Parse a JSON vector file from the in-repo copy."""
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    assert (VECTORS / "README.md").is_file(), "the vectors' README must stay next to them"
    return VECTORS
