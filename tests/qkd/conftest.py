"""Fixtures for the QKD tests: demo PKIs and a running KME pair on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.kme import KMEEnd, KMEListener, KMEPairServer
from qflare.qkd.channel import Channel
from qflare.qkd.client import KMEClient
from qflare.qkd.keystore import BB84Link, KeyStore, KeyStoreLimits
from qflare.qkd.pki import DemoPKI, create_demo_pki

SAES = ("edge-1", "edge-2", "server", "intruder")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    return create_demo_pki(tmp_path_factory.mktemp("pki"), sae_ids=SAES)


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    """Same names, another CA: nothing it issued may be accepted by the real PKI's parties."""
    return create_demo_pki(tmp_path_factory.mktemp("rogue"), sae_ids=SAES, ca_name="rogue CA")


def start_pair(store: KeyStore, pki: DemoPKI) -> KMEPairServer:
    a = KMEListener(KMEEnd("kme-a", frozenset({"edge-1", "edge-2"})), 0, pki.cert("kme-a"), pki.key("kme-a"))
    b = KMEListener(KMEEnd("kme-b", frozenset({"server"})), 0, pki.cert("kme-b"), pki.key("kme-b"))
    server = KMEPairServer(store, a=a, b=b, ca=pki.ca)
    server.start()
    return server


@pytest.fixture(scope="module")
def kme_store() -> KeyStore:
    store = KeyStore(KeyStoreLimits(max_key_count=2000))
    BB84Link(store, Channel(distance_km=10.0), pulses_per_frame=1_000_000, seed=11).fill(16_000)
    return store


@pytest.fixture(scope="module")
def kme_pair(kme_store: KeyStore, pki: DemoPKI) -> Iterator[KMEPairServer]:
    server = start_pair(kme_store, pki)
    yield server
    server.stop()


def client(url: str, pki: DemoPKI, sae: str, *, ca: Path | None = None) -> KMEClient:
    return KMEClient(url, cert=pki.cert(sae), key=pki.key(sae), ca=ca or pki.ca, timeout=5.0)


@pytest.fixture()
def master(kme_pair: KMEPairServer, pki: DemoPKI) -> Iterator[KMEClient]:
    with client(kme_pair.urls[0], pki, "edge-1") as c:
        yield c


@pytest.fixture()
def slave(kme_pair: KMEPairServer, pki: DemoPKI) -> Iterator[KMEClient]:
    with client(kme_pair.urls[1], pki, "server") as c:
        yield c
