"""What a new user hit: a bad option gave a traceback, or was refused only after 6-25 s of start-up.

Each case runs ``qflare`` in a fresh interpreter (from a temporary directory, at 80 columns) and asserts
one ``error [...]`` line naming the option, no traceback, no password, and that nothing heavy was
imported or started before the refusal (no torch, no server app, no run directory): that is "fast" in a
form a loaded machine cannot make flaky.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """\
import atexit, sys
heavy = ("torch", "qflare.server.app", "qflare.sim.runner", "qflare.enclave.backend")
atexit.register(lambda: sys.stderr.write("\\nIMPORTED " + ",".join(m for m in heavy if m in sys.modules) + "\\n"))
from qflare.cli.app import main
sys.argv = ["qflare", *sys.argv[1:]]
main()
"""


def run_qflare(tmp_path: Path, *args: str) -> tuple[int, list[str], set[str]]:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    env.pop("QFLARE_ADMIN_TOKEN", None)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    imported_line = next(ln for ln in lines if ln.startswith("IMPORTED "))
    lines.remove(imported_line)
    imported = set(filter(None, imported_line.removeprefix("IMPORTED ").split(",")))
    return proc.returncode, lines, imported


def assert_one_line_error(code: int, lines: list[str], *needles: str) -> None:
    assert code == 3, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error ["), lines
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--partition", "foo"], ["--partition", "foo"]),
        (["--task", "digits", "--partition", "sensor"], ["--partition", "sensor"]),
        (["--enclave", "sgx"], ["--enclave", "sgx"]),
        (["--key-source", "foo"], ["--key-source", "foo"]),
        (["--attackers", "replay,foo"], ["--attackers", "foo"]),
        (["--aggregator", "foo"], ["--aggregator", "foo"]),
        (["--aggregator", "krum", "--aggregator-params", '{"zz": 1}'], ["--aggregator-params", "zz"]),
        (["--aggregator-params", "[1"], ["--aggregator-params", "JSON"]),
        (["--task", "weather"], ["--task", "weather"]),
    ],
)
def test_simulate_refuses_a_bad_option_in_one_line_before_starting_anything(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    code, lines, imported = run_qflare(tmp_path, "simulate", "--clients", "2", "--rounds", "1", *args)
    assert_one_line_error(code, lines, *needles)
    # The task-specific partition check needs the task (torch); everything else is refused before it.
    if "sensor" not in args:
        assert not imported, imported
    assert not (tmp_path / "runs").exists()


def test_server_refuses_an_unknown_database_scheme(tmp_path: Path) -> None:
    code, lines, imported = run_qflare(tmp_path, "server", "--db", "garbage://x", "--port", "1")
    assert_one_line_error(code, lines, "--db", "garbage")
    assert not imported, imported


def test_server_names_an_unreachable_postgres_host_but_never_its_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, lines, imported = run_qflare(tmp_path, "server", "--db",
                                       f"postgresql://bob:s3cret-pw@127.0.0.1:{port}/qflare", "--port", "1")
    assert_one_line_error(code, lines, "--db", f"127.0.0.1:{port}")
    assert "s3cret-pw" not in lines[0]
    assert not imported, imported


@pytest.mark.parametrize("which", ["cert", "key", "junk"])
def test_server_refuses_missing_or_bad_tls_files(tmp_path: Path, which: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cert, key = {"cert": ("missing.pem", "junk.pem"), "key": ("junk.pem", "missing.pem"),
                 "junk": ("junk.pem", "junk.pem")}[which]
    code, lines, imported = run_qflare(tmp_path, "server", "--tls-cert", cert, "--tls-key", key, "--port", "1")
    option = {"cert": "--tls-cert", "key": "--tls-key", "junk": "--tls-cert"}[which]
    assert_one_line_error(code, lines, option)
    assert not imported, imported


@pytest.mark.parametrize(("option", "value"), [("--log-level", "loud"), ("--log-format", "xml")])
def test_server_refuses_an_unknown_log_level_or_format_before_starting(tmp_path: Path, option: str,
                                                                       value: str) -> None:
    code, lines, imported = run_qflare(tmp_path, "server", option, value, "--port", "1")
    assert_one_line_error(code, lines, option, value)
    assert not imported, imported
    assert not (tmp_path / "qflare.db").exists()  # refused before the database was opened


@pytest.mark.parametrize("device_id", ["bad id/../x", "..", "a" * 65, ""])
def test_keygen_refuses_a_device_id_that_is_not_one(tmp_path: Path, device_id: str) -> None:
    code, lines, _ = run_qflare(tmp_path, "device", "keygen", "--device-id", device_id, "--out-dir", "keys")
    assert_one_line_error(code, lines, "--device-id")
    assert not (tmp_path / "keys").exists()


def test_version_prints_one_line(tmp_path: Path) -> None:
    from qflare import __version__

    proc = subprocess.run([sys.executable, "-m", "qflare", "--version"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"qflare {__version__}\n"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--key-source", "hybrid"], ["--key-source hybrid", "--kme-url", "--kme-pki"]),
        (["--key-source", "hybrid", "--kme-url", "https://kme:8443", "--kme-pki", "pki"], ["--kme-pki", "ca.pem"]),
        (["--witness-key", "w+1+A", "--require-witnesses", "1"], ["--ledger-key"]),
        (["--ledger-key", "nowhere.pub"], ["--ledger-key", "nowhere.pub"]),
    ],
)
def test_provision_refuses_hybrid_without_sae_certificates_and_witnesses_without_a_log_key(
        tmp_path: Path, args: list[str], needles: list[str]) -> None:
    code, lines, imported = run_qflare(tmp_path, "device", "provision", "edge_1", *args)
    assert_one_line_error(code, lines, *needles)
    assert not imported and not (tmp_path / "devices").exists()
