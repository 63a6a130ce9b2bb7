"""Issue 12: the operator token stays with the operator (not in edge processes' environments), a short
one is refused, and a server bound beyond loopback without TLS says so loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qflare.config import DataConfig
from qflare.sim import runner


def test_simulate_edges_do_not_get_the_operator_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a federation whose spawns are recorded instead of run.
    spawned: list[dict[str, str]] = []

    def fake_spawn(args: list[str], log_path: Path, env: dict[str, str], **_: Any) -> Any:
        spawned.append(env)
        return None

    monkeypatch.setattr(runner, "spawn_qflare", fake_spawn)
    (tmp_path / "logs").mkdir()
    env = {"QFLARE_ADMIN_TOKEN": "secret-operator-token-xyz", "PATH": "/usr/bin"}
    fed = runner.Federation(run_dir=tmp_path, url="http://127.0.0.1:1", admin_token="x", server=None,  # type: ignore[arg-type]
                            env=env)
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "server-kem.pub").write_text("pinned")
    device = fed.device_config("edge_0", DataConfig(task="digits", partition_index=0, num_partitions=1))

    # Execute
    fed.start_edge(device)

    # Assert
    assert len(spawned) == 1
    assert "QFLARE_ADMIN_TOKEN" not in spawned[0]
    assert spawned[0]["PATH"] == "/usr/bin"


@pytest.mark.parametrize("token", ["x", "a" * 15])
def test_short_operator_token_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    from qflare.cli.server_cmd import resolve_admin_token
    from qflare.environment import environment
    from qflare.errors import ConfigError

    monkeypatch.setenv("QFLARE_ADMIN_TOKEN", token)
    environment.cache_clear()
    with pytest.raises(ConfigError) as info:
        resolve_admin_token(None, tmp_path / "admin_token")
    assert info.value.reason == "weak_admin_token" and "QFLARE_ADMIN_TOKEN" in info.value.message
    monkeypatch.setenv("QFLARE_ADMIN_TOKEN", "a" * 16)
    environment.cache_clear()
    assert resolve_admin_token(None, tmp_path / "admin_token") == "a" * 16
    monkeypatch.delenv("QFLARE_ADMIN_TOKEN")
    environment.cache_clear()


def test_short_token_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qflare.cli.server_cmd import resolve_admin_token
    from qflare.environment import environment
    from qflare.errors import ConfigError

    monkeypatch.delenv("QFLARE_ADMIN_TOKEN", raising=False)
    environment.cache_clear()
    (tmp_path / "admin_token").write_text("short\n")
    with pytest.raises(ConfigError):
        resolve_admin_token(None, tmp_path / "admin_token")


@pytest.mark.parametrize(("host", "tls", "warned"), [
    ("0.0.0.0", None, True), ("192.168.1.5", None, True), ("::", None, True), ("example.org", None, True),
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False), ("0.0.0.0", "cert.pem", False),
])
def test_plain_http_beyond_loopback_warns(host: str, tls: str | None, warned: bool) -> None:
    from qflare.cli.server_cmd import plaintext_exposure_warning

    msg = plaintext_exposure_warning(host, tls)
    assert (msg is not None) == warned
    if msg:
        assert "WARNING" in msg and host in msg


def test_qflare_server_on_all_interfaces_prints_the_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from qflare.cli.app import app

    # The database URL is refused after the warning: the command stops before serving anything.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["server", "--host", "0.0.0.0", "--db", "nosuchdb://x"])
    assert result.exit_code != 0
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "WARNING: serving plain HTTP on 0.0.0.0" in " ".join(out.split())


def test_status_polls_reuse_one_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    built: list[int] = []
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json={"rounds_completed": 0}))
    real = httpx.Client

    def counting(*args: Any, **kw: Any) -> httpx.Client:
        built.append(1)
        return real(*args, transport=transport, **kw)

    monkeypatch.setattr(runner.httpx, "Client", counting)
    fed = runner.Federation(run_dir=tmp_path, url="http://127.0.0.1:1", admin_token="x" * 16, server=None,  # type: ignore[arg-type]
                            env={})
    for _ in range(5):
        assert fed.status() == {"rounds_completed": 0}
    assert len(built) == 1
    fed._status_client.close()  # type: ignore[union-attr]
