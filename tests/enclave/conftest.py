"""Enclave fixtures: small models, updates, envelopes, and simulated enclaves that are always closed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflare.crypto.envelope import seal_request
from qflare.crypto.kem import XWingPublicKey
from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.client import Enclave
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.launcher import SimulatedLauncher
from qflare.fl.serialize import dump_arrays
from qflare.fl.spec import ModelSpec

ROUND = 3
SHAPES = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (10, 36), "fc.bias": (10,)}


def update_path(round_id: int) -> str:
    return f"/v1/device/rounds/{round_id}/update"


def make_arrays(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, shape in SHAPES.items()}


def make_update(seed: int, num_examples: int = 10, **meta: str) -> bytes:
    return dump_arrays(make_arrays(seed), {"num_examples": str(num_examples), **meta})


def make_envelope(
    device: SigningKey,
    kem: XWingPublicKey,
    payload: bytes,
    *,
    round_id: int = ROUND,
    path: str | None = None,
    key_source: str = "mlkem",
    qkd_key: bytes | None = None,
    device_id: str = "dev-1",
) -> bytes:
    envelope, _ = seal_request(
        device,
        kem,
        device_id=device_id,
        method="POST",
        path=path if path is not None else update_path(round_id),
        round_id=round_id,
        payload=payload,
        now=time.time(),
        key_source=key_source,
        qkd_key=qkd_key,
        key_ids=("k1",) if qkd_key is not None else (),
    )
    return envelope


@pytest.fixture(scope="session")
def signer_key() -> SigningKey:
    """The enclave signing authority for every test enclave."""
    return SigningKey.generate()


@pytest.fixture(scope="session")
def device_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def spec() -> ModelSpec:
    return ModelSpec.from_arrays(make_arrays(0))


@pytest.fixture(scope="session")
def base_model() -> bytes:
    return dump_arrays({name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}, {"round_id": "0"})


EnclaveFactory = Callable[..., Enclave]
AggregatorFactory = Callable[..., EnclaveAggregator]


@pytest.fixture
def start_enclave(tmp_path: Path, signer_key: SigningKey) -> Iterator[EnclaveFactory]:
    """Start simulated enclaves (``work_dir`` defaults to a fresh temporary directory); closes them all."""
    started: list[Enclave] = []

    def start(
        work_dir: Path | None = None, *, config: EnclaveConfig | None = None, call_timeout: float = 60.0, **kw: object
    ) -> Enclave:
        launcher = SimulatedLauncher(
            work_dir or tmp_path / f"enclave-{len(started)}",
            config=config or EnclaveConfig(),
            signing_key=kw.pop("signing_key", signer_key),  # type: ignore[arg-type]
            region_bytes=8 * 1024 * 1024,
            **kw,  # type: ignore[arg-type]
        )
        enclave = Enclave(launcher, call_timeout=call_timeout)
        started.append(enclave)
        enclave.start()
        return enclave

    yield start
    for enclave in started:
        enclave.close()


@pytest.fixture
def start_aggregator(start_enclave: EnclaveFactory) -> AggregatorFactory:
    """An :class:`EnclaveAggregator` over a fresh simulated enclave."""

    def start(work_dir: Path | None = None, *, inputs: str = "envelope", **kw: object) -> EnclaveAggregator:
        return EnclaveAggregator(start_enclave(work_dir, **kw), inputs=inputs)  # type: ignore[arg-type]

    return start


def validate_bytes(backend: Any, round_id: int, data: bytes) -> Any:
    """``backend.validate`` with ``data`` in the form the backend accepts (sealed envelope or plaintext)."""
    from qflare.fl.port import PlainUpdate, SealedUpdate

    sealed = getattr(backend, "inputs", "plaintext") == "envelope"
    return backend.validate(round_id, SealedUpdate(bytes(data)) if sealed else PlainUpdate(bytes(data)))
