"""An edge node under local DP: its epsilon in the update's metadata and its log; it stops at its budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from qflare.config import DataConfig, DeviceConfig, parse_config
from qflare.edge.attestation import AttestedEnclave
from qflare.edge.node import EdgeNode
from qflare.errors import ConfigError
from qflare.fl.local_dp import LocalDP, steps_per_round
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import TrainConfig, get_arrays
from qflare.fl.training_config import LocalDPConfig
from tests.edge.test_client import _cfg


class _ModelServer:
    """A client stub: no enclave, one global model, every task a training task."""

    enclave: AttestedEnclave | None = None
    attestation_required = False

    def __init__(self, blob: bytes, train: TrainConfig) -> None:
        self.blob, self.train, self.round = blob, train, 0

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        self.round += 1
        return {"status": "train", "round_id": self.round, "model_version": 0, "model_sha256": "-",
                "train_config": self.train.model_dump()}

    def attest(self) -> AttestedEnclave:
        raise AssertionError("not attested")

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        return self.blob

    def upload_update(self, round_id: int, blob: bytes) -> dict[str, Any]:
        raise AssertionError("train_round only")


@pytest.mark.slow
def test_a_device_reports_its_epsilon_and_stops_at_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: a budget that one round of this device's shard fits and a second does not
    digits = get_task("digits")
    data = DataConfig(task="digits", partition_index=0, num_partitions=10, seed=0)
    n = len(digits.client_dataset(0, 10, seed=0))
    probe = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0)
    one_round, two_rounds = (probe.epsilon_after(k * steps_per_round(n, 32, 1), 32 / n) for k in (1, 2))
    train = TrainConfig(epochs=1, batch_size=32, lr=0.05,
                        dp=LocalDPConfig(noise_multiplier=1.0, target_epsilon=(one_round + two_rounds) / 2, rounds=1))
    client = _ModelServer(dump_arrays(get_arrays(digits.build_model(0))), train)
    node = EdgeNode(_cfg(data=data), client, sleep=lambda s: None)
    # Execute
    with caplog.at_level(logging.INFO, logger="qflare.edge"):
        blob = node.train_round(client.task())
        second = node.train_round(client.task())
    # Assert: the first upload carries the accountant's figures; the second round is not trained
    assert blob is not None
    _, meta = load_arrays(blob, node.spec)
    assert meta["dp_mode"] == "local" and float(meta["dp_epsilon"]) == pytest.approx(one_round)
    assert meta["dp_delta"] == "1e-05" and int(meta["dp_steps"]) == steps_per_round(n, 32, 1)
    assert second is None
    lines = [r.getMessage() for r in caplog.records]
    assert any("round 1 local DP: epsilon" in m for m in lines)
    assert any("round 2 not trained" in m and "local privacy budget" in m for m in lines)


@pytest.mark.slow
def test_a_device_with_its_own_local_dp_applies_it_whatever_the_task_says() -> None:
    # Prepare: the server's task asks for no DP (and FedProx); the device's own config requires DP-SGD
    digits = get_task("digits")
    data = DataConfig(task="digits", partition_index=1, num_partitions=10, seed=0)
    own = LocalDPConfig(noise_multiplier=2.0, max_grad_norm=0.5)
    client = _ModelServer(dump_arrays(get_arrays(digits.build_model(0))),
                          TrainConfig(epochs=1, batch_size=32, lr=0.05, proximal_mu=0.1))
    node = EdgeNode(_cfg(data=data, local_dp=own), client, sleep=lambda s: None)
    # Execute
    blob = node.train_round(client.task())
    # Assert
    assert blob is not None
    _, meta = load_arrays(blob, node.spec)
    assert meta["dp_noise_multiplier"] == "2.0" and meta["dp_max_grad_norm"] == "0.5"
    assert float(meta["dp_epsilon"]) > 0


def test_a_bad_device_local_dp_names_the_key() -> None:
    doc = {"device_id": "edge_01", "identity_key_file": "k", "server_key_fingerprint": "x",
           "local_dp": {"noise_multiplier": 1.0, "max_grad_norm": 0}}
    with pytest.raises(ConfigError) as err:
        parse_config(DeviceConfig, doc, source="device_config.yaml")
    assert "local_dp.max_grad_norm" in err.value.message


def _dp_node(tmp_path: Path, train: TrainConfig) -> tuple[EdgeNode, _ModelServer]:
    digits = get_task("digits")
    data = DataConfig(task="digits", partition_index=2, num_partitions=10, seed=0)
    client = _ModelServer(dump_arrays(get_arrays(digits.build_model(0))), train)
    node = EdgeNode(_cfg(data=data), client, sleep=lambda s: None, privacy_state=tmp_path / "edge_01.dp-spent.json")
    return node, client


@pytest.mark.slow
def test_a_restarted_device_keeps_counting_its_privacy_spend(tmp_path: Path) -> None:
    # Prepare
    train = TrainConfig(epochs=1, batch_size=32, lr=0.05, dp=LocalDPConfig(noise_multiplier=1.0))
    first, client = _dp_node(tmp_path, train)
    first.train_round(client.task())
    spent = first.local_dp.epsilon
    # Execute: a new process (a new node) on the same state file trains one more round
    second, client = _dp_node(tmp_path, train)
    blob = second.train_round(client.task())
    # Assert: the second node's epsilon composes both rounds, not one
    assert blob is not None
    _, meta = load_arrays(blob, second.spec)
    assert second.local_dp.steps == 2 * first.local_dp.steps
    assert float(meta["dp_epsilon"]) > spent
    assert float(meta["dp_epsilon"]) == pytest.approx(second.local_dp.epsilon)


def test_an_unreadable_privacy_state_is_never_taken_as_zero(tmp_path: Path) -> None:
    (tmp_path / "edge_01.dp-spent.json").write_text('{"history": [[1.0, 2.0, 5]]}')  # a sampling rate above 1
    node, client = _dp_node(tmp_path, TrainConfig(epochs=1, dp=LocalDPConfig(noise_multiplier=1.0)))
    with pytest.raises(ConfigError) as err:
        node.train_round(client.task())
    assert err.value.reason == "bad_privacy_state"
