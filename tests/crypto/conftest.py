"""Shared helpers for the crypto tests: vector loading (pyca-style) and the server check pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from qflare.crypto.encoding import KeySource
from qflare.crypto.envelope import (
    check_timestamp,
    decrypt_envelope,
    parse_envelope,
    verify_envelope_signature,
)
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.signing import SigningKey, VerifyKey

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load_vectors(name: str) -> Any:
    """Load a JSON vector file from ``tests/vectors``."""
    return json.loads((VECTORS / name).read_text())


def json_parametrize(name: str, select: Callable[[Any], list[dict[str, Any]]], id_key: str) -> Any:
    """``pytest.mark.parametrize("vector", ...)`` over the entries of a vector file."""
    entries = select(load_vectors(name))
    return pytest.mark.parametrize("vector", entries, ids=[str(e[id_key]) for e in entries])


NOW = 1_767_225_600.0


def server_pipeline(
    data: bytes,
    device_public: VerifyKey,
    server_private: XWingPrivateKey,
    *,
    now: float = NOW,
    allowed: Collection[KeySource | str] = (KeySource.MLKEM,),
    extra_secret: bytes | None = None,
    max_size: int = 1 << 20,
) -> tuple[bytes, Any]:
    """The server's check order: size/structure, timestamp, signature, decrypt."""
    env = parse_envelope(data, max_size=max_size)
    check_timestamp(env, now, 300)
    verify_envelope_signature(env, device_public)
    return decrypt_envelope(env, server_private, allowed_key_sources=allowed, extra_secret=extra_secret)


@pytest.fixture(scope="session")
def device_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def server_key() -> XWingPrivateKey:
    return XWingPrivateKey.generate()
