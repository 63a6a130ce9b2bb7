"""``/dashboard`` verifies what it shows: the enclave's quote, the ledger's checkpoint, the QKD link's QBER;
and it names why a device is quarantined. Each failure is shown as ``failed [reason]: message``."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from qflare.config import QKDConfig
from qflare.crypto import SigningKey
from qflare.crypto.keyfile import write_public_key
from qflare.kme import KMEEnd, KMEListener, KMEPairServer
from qflare.qkd.channel import Channel
from qflare.qkd.keystore import BB84Link, KeyStore, KeyStoreLimits
from qflare.qkd.pki import DemoPKI, create_demo_pki
from qflare.server.app import build_state, create_app
from qflare.server.ledger import LOG_KEY_FILE
from tests.server.conftest import ADMIN, FakeClock, Harness, config_for, enroll, make_harness

_KEY = SigningKey.generate()


def _page(h: Harness) -> str:
    h.client.cookies.clear()
    r = h.client.post("/dashboard/login", data={"token": ADMIN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = h.client.get("/dashboard")
    assert page.status_code == 200, page.text
    return page.text


def _check(page: str, element: str) -> str:
    """The text of one check (``verified: ...``, ``failed [reason]: ...``, ``absent: ...``)."""
    m = re.search(rf'<span id="{element}" class="check (\w+)">(.*?)</span>', page, re.S)
    assert m is not None, f"no #{element} in the page"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(2)))


def _close_round(h: Harness) -> None:
    rid = h.open_round()
    for device in h.keys:
        assert h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
    rnd = h.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated"


# --- quarantine -----------------------------------------------------------------------------------------


def test_a_quarantined_device_shows_why_and_how_to_restore_it(harness: Harness) -> None:
    # Prepare: reputation quarantines edge_1, as after refused updates in 3 of 5 rounds.
    why = "refused update_norm_too_large: refused or flagged in 3 of the last 5 rounds (1, 2, 3)"
    assert harness.state.orchestrator.reputation.quarantine("edge_1", why)
    # Execute
    page = _page(harness)
    # Assert: the reason on edge_1's row only, with the restore command
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr class="\w+"><td>(edge_\d)</td>(.*?)</tr>', page, re.S)}
    assert html.escape(why, quote=False) in rows["edge_1"] and "qflare device restore edge_1" in rows["edge_1"]
    assert "quarantined" in rows["edge_1"] and "<td class=\"why\">-</td>" in rows["edge_0"]


# --- the ledger's checkpoint ----------------------------------------------------------------------------


def test_the_latest_checkpoint_is_verified_against_the_published_log_key(harness: Harness) -> None:
    assert _check(_page(harness), "checkpoint-check").startswith("absent: no checkpoint yet")
    _close_round(harness)
    shown = _check(_page(harness), "checkpoint-check")
    assert shown.startswith("verified: size ") and "both halves of ledger-log.pub" in shown
    assert "entries proven included" in shown


def test_a_checkpoint_under_another_key_fails_with_the_reason(harness: Harness) -> None:
    _close_round(harness)
    key_file = Path(harness.state.config.server.key_dir) / LOG_KEY_FILE
    write_public_key(key_file, _KEY.public_key())  # the published key is not the one that signs
    shown = _check(_page(harness), "checkpoint-check")
    assert shown == f"failed [no_verifiable_signatures]: the checkpoint does not verify under {key_file}: note has " \
                    "no verifiable signatures"
    key_file.unlink()
    assert _check(_page(harness), "checkpoint-check").startswith(
        f"failed [log_key_missing]: cannot read the published log key {key_file}")


def test_an_entry_changed_in_the_database_fails_the_check(harness: Harness) -> None:
    _close_round(harness)
    ledger = harness.state.ledger
    assert ledger is not None
    latest = ledger.store.latest_checkpoint()
    assert latest is not None
    size = latest.size  # the newest entry the checkpoint covers
    entry = ledger.store.read_entries(size - 1, size)[0]
    with harness.state.repo.engine.begin() as c:  # one byte flipped, as with the sqlite3 tool
        c.execute(text("UPDATE ledger_entries SET entry = :e WHERE idx = :i"),
                  {"e": entry[:-1] + bytes([entry[-1] ^ 1]), "i": size - 1})
    shown = _check(_page(harness), "checkpoint-check")
    assert shown.startswith(f"failed [entry_not_included]: entry {size - 1} as stored is not included")


def test_without_a_ledger_the_check_says_so(tmp_path: Path) -> None:
    for h in make_harness(tmp_path):
        h.state.ledger = None
        assert "no ledger on this server" in _page(h)


# --- the enclave's quote --------------------------------------------------------------------------------


@pytest.fixture
def eh(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path, enclave=True)


def test_a_fresh_quote_is_verified_against_the_recomputed_measurement(eh: Harness) -> None:
    shown = _check(_page(eh), "quote-check")
    assert shown.startswith("verified: a fresh ") and "simulated enclave (demos only)" in shown
    assert "recomputed from the enclave code and config" in shown


def test_without_an_enclave_the_quote_check_says_so(harness: Harness) -> None:
    assert _check(_page(harness), "quote-check") == "absent: no enclave (enclave.backend: none)"


def test_a_bad_quote_fails_with_the_reason(eh: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    assert eh.state.enclave is not None
    real = eh.state.enclave.quote

    def flipped(nonce: bytes) -> bytes:
        q = real(nonce)
        return q[:-1] + bytes([q[-1] ^ 1])

    monkeypatch.setattr(eh.state.enclave, "quote", flipped)
    assert _check(_page(eh), "quote-check").startswith("failed [bad_quote_signature]")
    monkeypatch.setattr(eh.state.enclave, "quote", lambda nonce: real(bytes(32)))  # answers another challenge
    assert _check(_page(eh), "quote-check").startswith("failed [stale_nonce]")


def test_an_enclave_that_is_not_this_servers_code_fails(eh: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # The enclave code on disk changed after the enclave started (or the enclave runs other code).
    from qflare.enclave.measurement import Measurement

    assert eh.state.enclave is not None
    launcher = eh.state.enclave.enclave.launcher
    real = launcher.measurement()  # type: ignore[attr-defined]
    other = Measurement(bytes(32), real.files, real.runtime, real.config)
    monkeypatch.setattr(launcher, "measurement", lambda: other)
    shown = _check(_page(eh), "quote-check")
    assert shown == "failed [sigstruct_mismatch]: SIGSTRUCT approves another measurement or configuration than " \
                    "this enclave's"


# --- the QKD link ---------------------------------------------------------------------------------------


def _kme(tmp_path: Path, pki: DemoPKI, *, eavesdrop: float = 0.0) -> KMEPairServer:
    store = KeyStore(KeyStoreLimits(max_key_count=2000))
    BB84Link(store, Channel(distance_km=10.0), pulses_per_frame=200_000, eavesdrop=eavesdrop, seed=3).fill(2000)
    a = KMEListener(KMEEnd("kme-a"), 0, pki.cert("kme-a"), pki.key("kme-a"))
    b = KMEListener(KMEEnd("kme-b", frozenset({"server"})), 0, pki.cert("kme-b"), pki.key("kme-b"))
    server = KMEPairServer(store, a=a, b=b, ca=pki.ca)
    server.start()
    return server


def _qkd_harness(tmp_path: Path, pki: DemoPKI, kme_url: str, *, qkd_device: bool = True) -> Iterator[Harness]:
    qkd = QKDConfig(kme_url=kme_url, cert=str(pki.cert("server")), key=str(pki.key("server")), ca=str(pki.ca),
                    timeout_seconds=2.0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = config_for(tmp_path).model_copy(update={"qkd": qkd})
    clock = FakeClock()
    state = build_state(config, admin_token=ADMIN, clock=clock)
    with TestClient(create_app(state, run_ticker=False)) as client:
        enroll(client, "edge_0", _KEY, "hybrid" if qkd_device else "mlkem")
        yield Harness(client=client, state=state, clock=clock, keys={"edge_0": _KEY})
    state.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    return create_demo_pki(tmp_path_factory.mktemp("pki"), sae_ids=["edge_0", "server"])


def test_the_qkd_link_shows_its_qber_and_key_rate(tmp_path: Path, pki: DemoPKI) -> None:
    kme = _kme(tmp_path, pki)
    try:
        for h in _qkd_harness(tmp_path, pki, kme.urls[1]):
            page = _page(h)
            assert _check(page, "qkd-check").startswith("verified: the KME answered")
            qber = re.search(r'id="qkd-qber">([\d.]+)%', page)
            assert qber is not None and 0.0 <= float(qber.group(1)) < 11.0 and "abort above 11%" in page
            assert re.search(r'id="qkd-rate">[\d.e-]+ bits per pulse; \d+ bits distilled in \d+ frames', page)
            assert "(link to edge_0)" in page
    finally:
        kme.stop()


def test_an_eavesdropped_link_fails_with_its_qber(tmp_path: Path, pki: DemoPKI) -> None:
    kme = _kme(tmp_path, pki, eavesdrop=1.0)
    try:
        for h in _qkd_harness(tmp_path, pki, kme.urls[1]):
            shown = _check(_page(h), "qkd-check")
            assert shown.startswith("failed [qber_above_threshold]: the last frame's QBER 2") and "above" in shown
            assert "qber_above_threshold" in _page(h)  # the last abort's reason too
    finally:
        kme.stop()


def test_an_unreachable_kme_and_no_qkd_device_are_said_plainly(tmp_path: Path, pki: DemoPKI) -> None:
    from qflare.sim.net import free_port

    url = f"https://127.0.0.1:{free_port()}"
    for h in _qkd_harness(tmp_path / "a", pki, url):
        assert _check(_page(h), "qkd-check").startswith(f"failed [kme_unreachable]: KME {url} unreachable")
    for h in _qkd_harness(tmp_path / "b", pki, url, qkd_device=False):
        assert _check(_page(h), "qkd-check") == "absent: no device uses QKD keys yet"
