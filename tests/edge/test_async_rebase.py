"""Async rounds on the device: an update trained on version b, when the server moved on to version v',
is rebased onto v' with its step weighted (1 + s) ** -a and sent with ?base_version=b."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qflare.edge.node import EdgeNode
from qflare.errors import RoundClosed
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays, sha256_hex
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays
from tests.edge.test_client import _cfg


def _models() -> tuple[ModelSpec, dict[int, bytes]]:
    model = get_task("digits").build_model()
    spec = ModelSpec.from_model(model)
    base = get_arrays(model)
    return spec, {v: dump_arrays({k: a + 0.1 * v for k, a in base.items()}, {}) for v in range(4)}


class _AsyncServer:
    """Buffer 1 (version 0) when the device asks for a task; buffers ``moves`` later when it uploads."""

    enclave = None
    attestation_required = False

    def __init__(self, models: dict[int, bytes], later: list[int], *, max_staleness: int = 5) -> None:
        self.models = models
        self.later = later  # the version the server is at for each task poll after the first
        self.max_staleness = max_staleness
        self.polls = 0
        self.uploads: list[tuple[int, bytes, int | None]] = []
        self.closed_once = False

    def _train(self, version: int) -> dict[str, Any]:
        return {"status": "train", "round_id": version + 1, "model_version": version,
                "model_sha256": sha256_hex(self.models[version]), "mode": "async",
                "staleness_exponent": 0.5, "max_staleness": self.max_staleness, "train_config": {"epochs": 1}}

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        self.polls += 1
        if self.polls == 1:
            return self._train(0)
        if self.later:
            return self._train(self.later.pop(0))
        return {"status": "done", "retry_after": 0}

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        return self.models[version]

    def upload_update(self, round_id: int, blob: bytes, base_version: int | None = None) -> dict[str, Any]:
        self.uploads.append((round_id, blob, base_version))
        return {"round_id": round_id, "device_id": "edge_01", "sha256": sha256_hex(blob), "num_examples": 1}


def _trained(spec: ModelSpec, models: dict[int, bytes]) -> bytes:
    base, _ = load_arrays(models[0], spec)
    return dump_arrays({k: a + 1.0 for k, a in base.items()}, {"num_examples": "5", "round_id": "1"})


def test_a_stale_update_is_rebased_onto_the_open_buffer_and_weighted() -> None:
    spec, models = _models()
    server = _AsyncServer(models, later=[3])  # trained on 0, the server is at version 3 when it uploads
    node = EdgeNode(_cfg(), server, sleep=lambda s: None)  # type: ignore[arg-type]
    update = node.train_round(server.task())
    assert update is not None
    trained = _trained(spec, models)
    node._send_update(1, trained)
    (round_id, blob, base_version), = server.uploads
    assert round_id == 4 and base_version == 0
    sent, meta = load_arrays(blob, spec)
    v3, _ = load_arrays(models[3], spec)
    for k in sent:  # model[3] + (1 + 3) ** -0.5 * (trained - model[0]) = model[3] + 0.5 * 1.0
        np.testing.assert_allclose(sent[k], v3[k] + 0.5, rtol=1e-6, atol=1e-6)
    assert meta["round_id"] == "4" and meta["num_examples"] == "5"
    assert node._last_upload == blob


def test_a_fresh_update_is_sent_as_trained_with_its_base_version() -> None:
    spec, models = _models()
    server = _AsyncServer(models, later=[0])  # still buffer 1 when it uploads
    node = EdgeNode(_cfg(), server, sleep=lambda s: None)  # type: ignore[arg-type]
    node.train_round(server.task())
    trained = _trained(spec, models)
    node._send_update(1, trained)
    assert server.uploads == [(1, trained, 0)]


def test_too_stale_is_not_sent() -> None:
    spec, models = _models()
    server = _AsyncServer(models, later=[3], max_staleness=2)
    node = EdgeNode(_cfg(), server, sleep=lambda s: None)  # type: ignore[arg-type]
    node.train_round(server.task())
    with pytest.raises(Exception, match="too_stale|versions behind") as info:
        node._send_update(1, _trained(spec, models))
    assert getattr(info.value, "reason", None) == "too_stale" and server.uploads == []


def test_a_buffer_that_fills_during_the_upload_is_rebased_again() -> None:
    spec, models = _models()
    server = _AsyncServer(models, later=[1, 2])
    real = server.upload_update

    def upload(round_id: int, blob: bytes, base_version: int | None = None) -> dict[str, Any]:
        if not server.closed_once:
            server.closed_once = True
            raise RoundClosed("buffer 2 filled")
        return real(round_id, blob, base_version)

    server.upload_update = upload  # type: ignore[method-assign]
    node = EdgeNode(_cfg(), server, sleep=lambda s: None)  # type: ignore[arg-type]
    node.train_round(server.task())
    node._send_update(1, _trained(spec, models))
    (round_id, _, base_version), = server.uploads
    assert round_id == 3 and base_version == 0
