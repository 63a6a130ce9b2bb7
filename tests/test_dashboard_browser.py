"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, after a simulate run.

``make test`` installs chromium first (``scripts/ensure-chromium.sh``); Playwright drives it through
``executable_path`` and never downloads a browser. The run: ``qflare simulate`` (3 clients x 2 rounds),
then ``qflare server`` on the run's database and configuration, an operator account from ``qflare
operator add``; the browser signs in, finds both rounds and the three devices, sees the enclave's fresh
quote and the ledger's latest checkpoint verified, and saves ``docs/img/dashboard.png``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qflare.sim.net import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "browser-test passphrase"


def _qflare(*args: str, cwd: Path, env: dict[str, str], timeout: float = 540) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qflare", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_an_operator_signs_in_and_sees_rounds_and_devices_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("no /usr/bin/chromium: make test runs scripts/ensure-chromium.sh first")
        pytest.skip("no /usr/bin/chromium (scripts/ensure-chromium.sh installs it)")
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "COLUMNS": "120", "OPERATOR_PASSWORD": PASSWORD}
    env.pop("QFLARE_ADMIN_TOKEN", None)
    # Prepare: a short run, then its server again, with an operator account.
    sim = _qflare("simulate", "--clients", "3", "--rounds", "2", "--epochs", "1", "--runs-dir", "runs", "--json",
                  cwd=tmp_path, env=env)
    assert sim.returncode == 0, sim.stderr
    run_dir = Path(json.loads(sim.stdout.strip().splitlines()[-1])["run_dir"])
    add = _qflare("operator", "add", "alice", "--password-env", "OPERATOR_PASSWORD", "--file", "ops.json",
                  cwd=tmp_path, env=env)
    assert add.returncode == 0, add.stderr
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "qflare", "server", "--config", str(run_dir / "global_config.yaml"), "--port",
         str(port), "--operators-file", "ops.json", "--token-file", "token"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        # Execute: sign in through the form, as a person would.
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{url}/dashboard")
                assert page.url.endswith("/dashboard/login")
                page.fill("input[name=name]", "alice")
                page.fill("input[name=password]", "not the password")
                page.click("button[type=submit]")
                assert "wrong operator name or password" in page.content()
                page.fill("input[name=name]", "alice")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#rounds")
                # Assert: both rounds, the three devices, the charts drawn.
                rounds = page.locator("#rounds tbody tr")
                assert rounds.count() == 2 and "aggregated" in rounds.first.inner_text()
                devices = page.locator("#devices tbody tr")
                assert devices.count() == 3
                assert "edge_01" in page.locator("#devices").inner_text()
                assert "signed in as alice" in page.content()
                # What the dashboard verified on this view: a fresh enclave quote and the latest checkpoint.
                quote = page.locator("#quote-check").inner_text()
                assert quote.startswith("verified: a fresh") and "recomputed from the enclave code" in quote, quote
                checkpoint = page.locator("#checkpoint-check").inner_text()
                assert checkpoint.startswith("verified: size ") and "ledger-log.pub" in checkpoint, checkpoint
                assert "quarantine reason" in page.locator("#devices thead").inner_text()
                drawn = page.evaluate("document.getElementById('chart-metric').toDataURL().length")
                blank = page.evaluate("(() => { const c = document.createElement('canvas'); c.width = 520;"
                                      " c.height = 220; return c.toDataURL().length; })()")
                assert drawn > blank  # the chart script ran and drew points
                out = ROOT / "docs" / "img" / "dashboard.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            finally:
                browser.close()
        assert out.read_bytes()[:4] == b"\x89PNG"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
