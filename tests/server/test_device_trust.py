"""The documented server-key pin: with the enclave on, a device trusts the attested quote, and the server
prints exactly the device_config.yaml lines it needs (found when tried: pinning
.qflare/server-keys/server-kem.pub made every request fail with 401 decryption_failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qflare.config import DeviceConfig
from qflare.crypto.keyfile import read_public_key
from qflare.edge.attestation import load_trust_root
from qflare.edge.client import DeviceClient
from qflare.server.keys import KEM_PUB_FILE
from qflare.server.trust import device_config_snippet
from tests.server.conftest import Harness, make_harness

pytestmark = pytest.mark.slow


def _config_from_snippet(snippet: str) -> DeviceConfig:
    doc = yaml.safe_load(snippet)
    return DeviceConfig.model_validate({"device_id": "edge_0", "identity_key_file": "edge_0.key", **doc})


def test_with_the_enclave_the_printed_lines_make_a_working_device(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, enclave=True):
        # Execute: what `qflare server` prints, pasted into a device config.
        cfg = _config_from_snippet(device_config_snippet(h.state, server_url="http://testserver", ca_file=None))
        assert cfg.server_public_key_file is None and cfg.server_key_fingerprint is None
        assert cfg.attestation is not None and cfg.attestation.allow_simulated
        client = DeviceClient("http://testserver", "edge_0", h.keys["edge_0"], None,
                              transport=h.client._transport, clock=h.clock)  # type: ignore[attr-defined]
        client.require_attestation(cfg.attestation, load_trust_root(Path(cfg.attestation.trust_root_file or "")))

        # Assert: the device attests and talks to the server; the host's key file is not the one in use.
        assert client.task()["status"] == "wait"
        host_key = read_public_key(Path(h.state.config.server.key_dir) / KEM_PUB_FILE) \
            if (Path(h.state.config.server.key_dir) / KEM_PUB_FILE).exists() else None
        assert client.enclave is not None and client.enclave.kem != host_key
        client.close()


def test_without_the_enclave_the_printed_lines_pin_the_server_key(harness: Harness) -> None:
    cfg = _config_from_snippet(device_config_snippet(harness.state, server_url="http://testserver", ca_file=None))
    client = DeviceClient("http://testserver", "edge_0", harness.keys["edge_0"], harness.server_pub,
                          transport=harness.client._transport, clock=harness.clock)  # type: ignore[attr-defined]
    assert cfg.attestation is None and cfg.server_key_fingerprint is not None
    assert client.task()["status"] == "wait"


def test_pinning_a_server_key_beside_attestation_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="pin no server key"):
        DeviceConfig.model_validate({
            "device_id": "edge_0", "identity_key_file": "k", "server_public_key_file": "server-kem.pub",
            "attestation": {"expected_measurement": "0" * 64, "expected_signer": "0" * 64},
        })
