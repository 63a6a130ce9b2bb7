"""The edge node's simulation-only poisoning hook (``simulation_attack``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qflare.config import DataConfig, DeviceConfig, SimulationAttackConfig
from qflare.edge.node import EdgeNode
from qflare.errors import ConfigError
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays


class _Offline:
    """A client with no enclave that serves the task's initial model."""

    enclave = None
    attestation_required = False

    def __init__(self) -> None:
        self.model = dump_arrays(get_arrays(get_task("digits").build_model(0)))

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        return self.model


def _config(attack: SimulationAttackConfig | None) -> DeviceConfig:
    return DeviceConfig(device_id="edge_01", identity_key_file="k", server_key_fingerprint="x",
                        data=DataConfig(task="digits", num_partitions=5, partition_index=0), simulation_attack=attack)


TASK = {"round_id": 1, "model_version": 0, "model_sha256": "x", "train_config": {"epochs": 1}}


def test_an_edge_node_refuses_a_simulation_attack_without_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QFLARE_SIMULATION", raising=False)
    with pytest.raises(ConfigError) as info:
        EdgeNode(_config(SimulationAttackConfig(kind="scaling")), _Offline())  # type: ignore[arg-type]
    assert info.value.reason == "simulation_attack_refused"


@pytest.mark.parametrize("kind", ["scaling", "sample-inflation", "ipm", "label-flip"])
def test_a_malicious_edge_node_sends_its_poisoned_update(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("QFLARE_SIMULATION", "1")
    client = _Offline()
    honest = EdgeNode(_config(None), client)  # type: ignore[arg-type]
    spec = honest.spec
    base, _ = load_arrays(client.model, spec)
    params: dict[str, Any] = {"factor": 10} if kind == "scaling" else {"estimates": 1} if kind == "ipm" else {}
    bad = EdgeNode(_config(SimulationAttackConfig(kind=kind, params=params)), client)  # type: ignore[arg-type]
    h_arrays, h_meta = load_arrays(honest.train_round(TASK), spec)
    b_arrays, b_meta = load_arrays(bad.train_round(TASK), spec)
    name = next(iter(spec))
    h_step, b_step = h_arrays[name] - base[name], b_arrays[name] - base[name]
    if kind == "scaling":
        np.testing.assert_allclose(b_step, 10 * h_step, rtol=1e-3, atol=1e-5)
    elif kind == "sample-inflation":
        np.testing.assert_allclose(b_step, -h_step, rtol=1e-3, atol=1e-5)
        assert int(b_meta["num_examples"]) == 100 * int(h_meta["num_examples"])
    elif kind == "ipm":
        assert float(np.sum(b_step * h_step)) < 0  # opposite to the honest direction
    else:
        assert not np.allclose(b_step, h_step)  # trained on flipped labels
