"""The top-level CLI: every command group is wired, errors become exit codes with their reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.app import app, main

runner = CliRunner()


@pytest.mark.parametrize("group", ["server", "edge", "simulate", "init", "device", "qkd", "kme", "enclave", "bench"])
def test_every_command_has_help(group: str) -> None:
    result = runner.invoke(app, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_a_config_error_exits_3_with_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "device.yaml"
    bad.write_text("device_id: edge_01\ntorch_threads: many\n")
    monkeypatch.setattr("sys.argv", ["qflare", "edge", "--config", str(bad)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "invalid_config" in err and "torch_threads" in err


def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path: Path) -> None:
    result = runner.invoke(app, ["device", "keygen", "--device-id", "edge_07", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "edge_07.key").stat().st_mode & 0o777 == 0o600
    assert "fingerprint" in result.output and "without a passphrase" in result.output
    again = runner.invoke(app, ["device", "keygen", "--device-id", "edge_07", "--out-dir", str(tmp_path)])
    assert again.exit_code != 0  # never overwrite an identity silently


def test_keygen_with_a_passphrase_encrypts_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qflare.crypto.keyfile import read_private_key
    from qflare.crypto.secret_access import TOKEN
    from qflare.errors import QFlareError

    monkeypatch.setenv("EDGE_PASS", "correct horse battery staple")
    result = runner.invoke(app, ["device", "keygen", "--device-id", "edge_08", "--out-dir", str(tmp_path),
                                 "--passphrase-env", "EDGE_PASS"])
    assert result.exit_code == 0, result.output
    assert read_private_key(tmp_path / "edge_08.key", token=TOKEN, passphrase="correct horse battery staple")
    with pytest.raises(QFlareError):
        read_private_key(tmp_path / "edge_08.key", token=TOKEN, passphrase="wrong")


@pytest.mark.parametrize("columns", ["20", "80", "400"])
def test_messages_do_not_wrap_whatever_the_terminal_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          columns: str) -> None:
    # Found when tried: from a long clone path, Rich wrapped "without\na passphrase" at 80 columns.
    deep = tmp_path / ("a-long-directory-name-" * 6) / "keys"
    deep.mkdir(parents=True)
    monkeypatch.setenv("COLUMNS", columns)
    result = runner.invoke(app, ["device", "keygen", "--device-id", "edge_07", "--out-dir", str(deep)])
    assert result.exit_code == 0, result.output
    # Assert: the warning is one line, whole, at any width.
    assert any("without a passphrase" in line for line in result.output.splitlines())
