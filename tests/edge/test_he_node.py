"""An edge node with the operator's CKKS context: it encrypts its update, decrypts the published aggregate, and
refuses an encrypted model it has no context for; its secret context file is refused without a secret key."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflare.config import DataConfig
from qflare.edge.attestation import AttestedEnclave
from qflare.edge.node import EdgeNode, he_context_for
from qflare.errors import ConfigError
from qflare.fl.he import HESumAccumulator, decrypt_aggregate, encrypt_update, make_context, write_context_files
from qflare.fl.serialize import dump_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig, get_arrays
from tests.edge.test_client import _cfg


class _HEServer:
    """A client stub serving one model blob (plaintext or a CKKS aggregate) and recording uploads."""

    enclave: AttestedEnclave | None = None
    attestation_required = False

    def __init__(self, blob: bytes, version: int) -> None:
        self.blob, self.version, self.uploads = blob, version, []  # type: ignore[var-annotated]
        self.bytes_sent = self.bytes_received = 0

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        return {"status": "train", "round_id": 3, "model_version": self.version, "model_sha256": "-",
                "train_config": TrainConfig(epochs=1, batch_size=32, lr=0.05).model_dump()}

    def attest(self) -> AttestedEnclave:
        raise AssertionError("not attested")

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        self.bytes_received += len(self.blob)
        return self.blob

    def upload_update(self, round_id: int, blob: bytes) -> dict[str, Any]:
        self.uploads.append(blob)
        self.bytes_sent += len(blob)
        return {"round_id": round_id, "sha256": "-", "num_examples": 1}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("he")
    write_context_files(make_context(), d / "secret.ctx", d / "public.ctx")
    return d / "secret.ctx", d / "public.ctx"


def test_a_device_decrypts_the_aggregate_trains_on_it_and_uploads_ciphertext(
        files: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the published aggregate of two updates (2 x model and 0 x model, 10 examples each: FedAvg = model)
    secret, public = files
    data = DataConfig(task="digits", partition_index=0, num_partitions=10, seed=0)
    cfg = _cfg(data=data).model_copy(update={"he_context_file": str(secret), "cost_log": True})
    ctx = he_context_for(cfg, secret.parent)
    model = get_arrays(get_task("digits").build_model(0))
    node = EdgeNode(cfg, _HEServer(b"", 1), sleep=lambda s: None, he_context=ctx)
    acc = HESumAccumulator(public.read_bytes(), node.spec)
    for scale in (2.0, 0.0):
        acc.add(encrypt_update(ctx, {k: v * scale for k, v in model.items()}, 10, node.spec, round_id=2), 10)
    client = _HEServer(acc.result(round_id=2), 1)
    node.client = client
    # Execute
    with caplog.at_level(logging.INFO, logger="qflare.edge"):
        assert node.step() == "train"
    # Assert: it trained from the decrypted aggregate and sent a ckks-update for round 3 that the server accepts
    (upload,) = client.uploads
    assert upload.startswith(b"QFHE1")
    server = HESumAccumulator(public.read_bytes(), node.spec)
    checked = server.check(upload, round_id=3)
    assert checked.num_examples == len(node.dataset)  # type: ignore[arg-type]
    server.add_checked(checked)
    mine = decrypt_aggregate(ctx, server.result(), node.spec)
    trained = get_arrays(node.model)
    for name in trained:
        np.testing.assert_allclose(mine[name], trained[name], atol=1e-4)
    costs = [json.loads(r.getMessage().split(" costs ", 1)[1]) for r in caplog.records if " costs " in r.getMessage()]
    assert costs and costs[0]["encrypted_model"] is True and costs[0]["upload_bytes_sent"] == len(upload)
    assert costs[0]["download_bytes_received"] == len(client.blob) and costs[0]["encode_seconds"] > 0
    assert 0 <= costs[0]["global_accuracy_local"] <= 1  # the device evaluated the model it decrypted


def test_an_encrypted_model_without_a_context_is_refused_and_a_public_file_is_no_device_context(
        files: tuple[Path, Path]) -> None:
    secret, public = files
    data = DataConfig(task="digits", partition_index=0, num_partitions=10, seed=0)
    ctx = he_context_for(_cfg(data=data).model_copy(update={"he_context_file": str(secret)}), secret.parent)
    node = EdgeNode(_cfg(data=data), _HEServer(b"", 1), sleep=lambda s: None)
    acc = HESumAccumulator(public.read_bytes(), node.spec)
    acc.add(encrypt_update(ctx, get_arrays(node.model), 5, node.spec), 5)
    node.client = _HEServer(acc.result(), 1)
    with pytest.raises(ConfigError) as err:
        node.train_round(node.client.task())
    assert err.value.reason == "he_no_context"
    # a device given the server's public file, or garbage, is refused before it starts
    for path, reason in ((public, "he_context_unreadable"), (secret.with_name("missing.ctx"), "he_context_unreadable")):
        with pytest.raises(ConfigError) as err:
            he_context_for(_cfg(data=data).model_copy(update={"he_context_file": str(path)}), secret.parent)
        assert err.value.reason == reason
    # a plaintext model is still loaded as such by a CKKS device (version 0 is the task's initial model)
    plain = EdgeNode(_cfg(data=data), _HEServer(dump_arrays(get_arrays(node.model)), 0), sleep=lambda s: None,
                     he_context=ctx)
    out = plain.train_round(plain.client.task())
    assert out is not None and out.startswith(b"QFHE1")


def test_a_device_refuses_an_aggregate_of_another_context_another_model_or_garbage(files: tuple[Path, Path]) -> None:
    from qflare.errors import AggregationError
    from qflare.fl.spec import ModelSpec

    secret, public = files
    data = DataConfig(task="digits", partition_index=0, num_partitions=10, seed=0)
    ctx = he_context_for(_cfg(data=data).model_copy(update={"he_context_file": str(secret)}), secret.parent)
    node = EdgeNode(_cfg(data=data), _HEServer(b"", 1), sleep=lambda s: None, he_context=ctx)
    # another operator's context (a server that swapped the public context)
    other = make_context()
    acc = HESumAccumulator(bytes(other.serialize(save_secret_key=False)), node.spec)
    acc.add(encrypt_update(other, get_arrays(node.model), 5, node.spec), 5)
    # an aggregate of another model (a small spec, same context)
    small = ModelSpec.from_arrays({"w": np.zeros(3, dtype=np.float32)})
    tiny = HESumAccumulator(public.read_bytes(), small)
    tiny.add(encrypt_update(ctx, {"w": np.ones(3, dtype=np.float32)}, 1, small), 1)
    for blob, reason in ((acc.result(), "he_context_mismatch"), (tiny.result(), "he_spec_mismatch"),
                         (b"QFHE1\x00\x00\x00\x02{}", "he_context_mismatch"), (b"QFHE1\xff", "he_malformed")):
        node.client = _HEServer(blob, 1)
        with pytest.raises(AggregationError) as err:
            node.train_round(node.client.task())
        assert err.value.reason == reason
