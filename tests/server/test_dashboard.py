"""``/dashboard``: operator sign-in (accounts or token), throttling, the session cookie, what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.server.operators import OperatorAccounts
from tests.server.conftest import ADMIN, Harness

PASSWORD = "a long operator passphrase"


@pytest.fixture
def dash(harness: Harness, tmp_path: Path) -> Harness:
    accounts = OperatorAccounts(tmp_path / "operators.json")
    accounts.add("alice", PASSWORD)
    harness.client.app.state.dashboard.accounts = OperatorAccounts(tmp_path / "operators.json")  # as read at start
    return harness


def _login(h: Harness, **form: str):  # type: ignore[no-untyped-def]
    return h.client.post("/dashboard/login", data=form, follow_redirects=False)


def test_without_a_session_the_dashboard_sends_you_to_sign_in(dash: Harness) -> None:
    r = dash.client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    page = dash.client.get("/dashboard/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_a_named_operator_signs_in_and_sees_rounds_and_devices(dash: Harness) -> None:
    rid = dash.open_round()
    for device in dash.keys:
        assert dash.post(device, f"/v1/device/rounds/{rid}/update", dash.update_blob()).status_code == 200
    r = _login(dash, name="alice", password=PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "qflare_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "Strict", "strict") and "Path=/dashboard" in cookie
    page = dash.client.get("/dashboard")
    assert page.status_code == 200, page.text
    assert "signed in as alice" in page.text
    assert 'id="rounds"' in page.text and "aggregated" in page.text
    for device in dash.keys:
        assert f"<td>{device}</td>" in page.text
    assert 'id="series"' in page.text and '"metric": [[1,' in page.text  # the chart's data, for round 1
    assert "/dashboard/static/chart.js" in page.text and "https://" not in page.text  # nothing from a CDN
    js = dash.client.get("/dashboard/static/chart.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")


def test_the_operator_token_also_signs_in(dash: Harness) -> None:
    assert _login(dash, token=ADMIN).status_code == 303
    assert "signed in as operator-token" in dash.client.get("/dashboard").text
    dash.client.cookies.clear()
    assert _login(dash, token="not-the-token-0123456789").status_code == 401


def test_wrong_passwords_get_401_then_429_even_with_the_right_one(dash: Harness) -> None:
    for _ in range(5):
        r = _login(dash, name="alice", password="wrong password!!")
        assert r.status_code == 401 and "wrong operator name or password" in r.text
    blocked = _login(dash, name="alice", password=PASSWORD)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert "qflare_session" not in blocked.headers.get("set-cookie", "")


def test_there_is_no_default_account(harness: Harness) -> None:
    for name, password in (("admin", "admin"), ("operator", "changethis"), ("alice", PASSWORD)):
        assert _login(harness, name=name, password=password).status_code == 401


def test_a_device_identity_cannot_open_the_dashboard(dash: Harness) -> None:
    envelope, _ = dash.seal("edge_0", "/dashboard/login", b"")
    r = dash.client.post("/dashboard/login", content=envelope,
                         headers={"content-type": "application/vnd.qflare.envelope"})
    assert r.status_code == 403 and r.json()["error"]["reason"] == "not_an_operator"


def test_a_session_works_only_from_its_cookie_and_ends_at_sign_out(dash: Harness) -> None:
    _login(dash, name="alice", password=PASSWORD)
    sid = dash.client.cookies["qflare_session"]
    # Another operator's session id pasted into a URL opens nothing; nor does a made-up cookie.
    dash.client.cookies.clear()
    assert dash.client.get(f"/dashboard?qflare_session={sid}", follow_redirects=False).status_code == 303
    dash.client.cookies.set("qflare_session", "forged-session-id", path="/dashboard")
    assert dash.client.get("/dashboard", follow_redirects=False).status_code == 303
    dash.client.cookies.clear()
    dash.client.cookies.set("qflare_session", sid, path="/dashboard")
    page = dash.client.get("/dashboard")
    assert page.status_code == 200
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    assert dash.client.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    dash.client.cookies.set("qflare_session", sid, path="/dashboard")
    assert dash.client.get("/dashboard", follow_redirects=False).status_code == 303
