"""Aborted QKD frames reported by the server's KME are logged in the audit ledger, with their QBER."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.ledger.entries import QkdLinkAborted, decode_event
from qflare.qkd.channel import Channel
from qflare.qkd.keystore import BB84Link
from qflare.qkd.pki import DemoPKI
from qflare.server.qkd_watch import QkdLinkWatch

from .conftest import Harness
from .test_dashboard_checks import _kme, _qkd_harness, pki  # noqa: F401 - pki is the module fixture


def _aborts(h: Harness) -> list[QkdLinkAborted]:
    ledger = h.state.ledger
    assert ledger is not None
    events = [decode_event(e) for e in ledger.store.read_entries(0, ledger.store.size())]
    return [e for e in events if isinstance(e, QkdLinkAborted)]


def test_frames_the_link_aborts_under_an_eavesdropper_are_logged_with_their_qber(
    tmp_path: Path, pki: DemoPKI  # noqa: F811
) -> None:
    # Prepare: an honest link (no aborts), watched once for its baseline
    kme = _kme(tmp_path, pki)
    try:
        for h in _qkd_harness(tmp_path, pki, kme.urls[1]):
            watch = QkdLinkWatch()
            assert watch.poll(h.state) == 0 and _aborts(h) == []

            # Execute: an eavesdropper on the fibre; the link's next three frames abort (QBER ~25 %)
            link = BB84Link(kme.store, Channel(distance_km=10.0), pulses_per_frame=200_000, eavesdrop=1.0, seed=4)
            results = [link.run_frame() for _ in range(3)]
            logged = watch.poll(h.state)

            # Assert: one entry for the new aborts, with the KME's reason and the last frame's QBER
            assert all(r.aborted for r in results)
            assert logged == 3
            (entry,) = _aborts(h)
            assert entry.link_id == "edge_0->server" and entry.reason == "qber_above_threshold"
            assert entry.qber is not None and 0.15 < entry.qber < 0.35
            assert watch.poll(h.state) == 0 and len(_aborts(h)) == 1  # nothing new: nothing logged
    finally:
        kme.stop()


def test_without_a_reachable_kme_nothing_is_logged(tmp_path: Path, pki: DemoPKI) -> None:  # noqa: F811
    from qflare.sim.net import free_port

    for h in _qkd_harness(tmp_path, pki, f"https://127.0.0.1:{free_port()}"):
        assert QkdLinkWatch().poll(h.state) == 0 and _aborts(h) == []


def test_the_server_watches_the_link_from_its_lifespan(
    tmp_path: Path, pki: DemoPKI, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import time

    from fastapi.testclient import TestClient

    from qflare.server import qkd_watch
    from qflare.server.app import create_app

    monkeypatch.setattr(qkd_watch, "WATCH_SECONDS", 0.1)
    kme = _kme(tmp_path, pki)
    try:
        for h in _qkd_harness(tmp_path, pki, kme.urls[1]):
            # Execute: the same state served with its background tasks; then the link is eavesdropped
            with TestClient(create_app(h.state, run_ticker=True)):
                time.sleep(0.5)  # the baseline poll
                link = BB84Link(kme.store, Channel(distance_km=10.0), pulses_per_frame=200_000, eavesdrop=1.0,
                                seed=5)
                link.run_frame()
                deadline = time.monotonic() + 20
                while not _aborts(h) and time.monotonic() < deadline:
                    time.sleep(0.1)

            # Assert
            assert [e.reason for e in _aborts(h)] == ["qber_above_threshold"]
    finally:
        kme.stop()
