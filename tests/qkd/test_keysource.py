"""Key sources: ML-KEM only by default; with QKD required, a KME failure is an error, never a downgrade."""

from __future__ import annotations

import socket

import pytest

from qflare.crypto import KeySource
from qflare.errors import ConfigError, QKDError
from qflare.kme import KMEPairServer
from qflare.qkd.keysource import MLKEMOnly, QKDKeySource, make_key_source
from qflare.qkd.pki import DemoPKI
from tests.qkd.conftest import client


def test_mlkem_only_yields_no_qkd_key() -> None:
    # Prepare
    source = make_key_source("mlkem")
    # Execute / Assert
    assert isinstance(source, MLKEMOnly) and not source.uses_qkd
    assert source.get_key() is None
    with pytest.raises(QKDError) as info:
        source.get_key_by_id("00000000-0000-4000-8000-000000000000")
    assert info.value.reason == "qkd_not_configured"


@pytest.mark.parametrize("mode", ["qkd", "hybrid"])
def test_edge_and_server_obtain_the_same_key(kme_pair: KMEPairServer, pki: DemoPKI, mode: str) -> None:
    # Prepare: edge node = master SAE at KME A, server = slave SAE at KME B
    with client(kme_pair.urls[0], pki, "edge-1") as edge_kme, client(kme_pair.urls[1], pki, "server") as srv_kme:
        edge = make_key_source(mode, client=edge_kme, peer_sae_id="server")
        server = make_key_source(mode, client=srv_kme)
        # Execute
        key_id, key = edge.get_key()  # type: ignore[misc]
        fetched = server.get_key_by_id(key_id, master_sae_id="edge-1")
        # Assert
        assert edge.mode is KeySource(mode) and edge.uses_qkd
        assert fetched == key and len(key) == 32
        with pytest.raises(QKDError) as info:  # a replayed key_ID is refused
            server.get_key_by_id(key_id, master_sae_id="edge-1")
        assert info.value.reason == "key_id_reused"


@pytest.mark.parametrize("mode", ["qkd", "hybrid"])
def test_required_qkd_with_kme_down_raises_instead_of_downgrading(pki: DemoPKI, mode: str) -> None:
    # Prepare: nothing listens on this port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with client(f"https://127.0.0.1:{port}", pki, "edge-1") as kme:
        source = make_key_source(mode, client=kme, peer_sae_id="server")
        # Execute / Assert: master and slave sides both refuse
        with pytest.raises(QKDError) as info:
            source.get_key()
        assert info.value.reason == "kme_unreachable"
        with pytest.raises(QKDError):
            source.get_key_by_id("00000000-0000-4000-8000-000000000000", master_sae_id="edge-1")


def test_key_size_is_configurable(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    with client(kme_pair.urls[0], pki, "edge-1") as kme:
        source = QKDKeySource(kme, mode="qkd", peer_sae_id="server", key_size_bits=512)
        assert len(source.get_key().key) == 64


@pytest.mark.parametrize(("mode", "needs_client"), [("qkd", True), ("hybrid", True), ("rsa", False)])
def test_bad_configuration_is_refused(mode: str, needs_client: bool) -> None:
    with pytest.raises(ConfigError):
        make_key_source(mode)


def test_qkd_source_refuses_mlkem_mode_and_odd_sizes(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    with client(kme_pair.urls[0], pki, "edge-1") as kme:
        with pytest.raises(ConfigError):
            QKDKeySource(kme, mode="mlkem", peer_sae_id="server")
        with pytest.raises(ConfigError):
            QKDKeySource(kme, mode="qkd", peer_sae_id="server", key_size_bits=100)
        with pytest.raises(ConfigError):
            QKDKeySource(kme, mode="qkd").get_key()  # no peer SAE configured


def test_adapters_fit_the_edge_fetcher_and_server_lookup(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # Prepare: the device's ID is "dev-1"; its SAE at the KME is "edge-1"
    with client(kme_pair.urls[0], pki, "edge-1") as edge_kme, client(kme_pair.urls[1], pki, "server") as srv_kme:
        edge = QKDKeySource(edge_kme, mode="hybrid", peer_sae_id="server")
        server = QKDKeySource(srv_kme, mode="hybrid", master_sae_of={"dev-1": "edge-1"}.__getitem__)
        # Execute
        key, key_ids = edge.fetch_for_request()
        looked_up = server.lookup_for_request("dev-1", key_ids)
        # Assert
        assert looked_up == key and len(key_ids) == 1
        with pytest.raises(QKDError) as info:
            server.lookup_for_request("dev-1", ())
        assert info.value.reason == "unknown_key_id"
