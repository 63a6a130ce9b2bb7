"""The operator and device commands against a real HTTPS server: init, keygen, token, join, enroll,
list, revoke; a device pinned to the local CA talks over TLS with post-quantum envelopes."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from qflare.config import EnclaveHostConfig, GlobalConfig, ServerConfig
from qflare.crypto.keyfile import read_private_key, read_public_key
from qflare.crypto.secret_access import TOKEN
from qflare.edge.client import DeviceClient
from qflare.errors import PermissionDenied
from qflare.sim.net import free_port
from qflare.sim.runner import spawn_qflare, stop_process

pytestmark = pytest.mark.slow


def _qflare(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qflare", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_operator_and_device_commands_over_https(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("QFLARE_ADMIN_TOKEN", None)
    # Prepare: qflare init, then an HTTPS server using what it made.
    init = _qflare("init", "--dir", ".qflare", cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    tls = tmp_path / ".qflare" / "tls"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = ServerConfig(port=port, db_url=f"sqlite:///{tmp_path / 'q.db'}",
                          key_dir=str(tmp_path / ".qflare" / "server-keys"),
                          tls_cert=str(tls / "server.pem"), tls_key=str(tls / "server.key"))
    cfg = GlobalConfig(enclave=EnclaveHostConfig(backend="none"), server=server)  # this test is about TLS and the CLI
    (tmp_path / "g.json").write_text(cfg.model_dump_json())  # YAML is a superset of JSON
    (tmp_path / "logs").mkdir()
    proc = spawn_qflare(["server", "--config", str(tmp_path / "g.json")], tmp_path / "logs" / "server.log", env,
                        cwd=tmp_path)
    try:
        ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        _wait_https(url, proc, ctx)
        common = ["--server", url, "--ca-file", str(tls / "ca.pem")]

        # Execute: device side keygen; operator enrolls one and issues a token for another.
        for d in ("edge_01", "edge_02"):
            r = _qflare("device", "keygen", "--device-id", d, "--out-dir", "keys", cwd=tmp_path, env=env)
            assert r.returncode == 0 and "fingerprint" in r.stdout, r.stderr
            assert (tmp_path / "keys" / f"{d}.key").stat().st_mode & 0o777 == 0o600
        r = _qflare("device", "enroll", "edge_01", "--public-key", "keys/edge_01.pub", *common, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        r = _qflare("device", "token", "--device-id", "edge_02", *common, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip().splitlines()[-1]
        r = _qflare("device", "join", "edge_02", "--token", token, "--key", "keys/edge_02.key", *common,
                    cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        again = _qflare("device", "join", "edge_02", "--token", token, "--key", "keys/edge_02.key", *common,
                        cwd=tmp_path, env=env)
        assert again.returncode != 0 and "enrollment_token_used" in again.stderr

        # A device pinned to the CA speaks the PQ protocol over TLS.
        server_pub = read_public_key(tmp_path / ".qflare" / "server-keys" / "server-kem.pub")
        key = read_private_key(tmp_path / "keys" / "edge_01.key", token=TOKEN, passphrase=None)
        with DeviceClient(url, "edge_01", key, server_pub, verify=ctx) as dev:  # type: ignore[arg-type]
            assert dev.task()["status"] in ("wait", "train")
            r = _qflare("device", "list", "--json", *common, cwd=tmp_path, env=env)
            listed = {d["device_id"]: d for d in json.loads(r.stdout)}
            assert set(listed) == {"edge_01", "edge_02"} and listed["edge_01"]["last_seen_at"] is not None
            r = _qflare("device", "revoke", "edge_01", *common, cwd=tmp_path, env=env)
            assert r.returncode == 0, r.stderr
            # Assert: revocation takes effect on the very next request.
            with pytest.raises(PermissionDenied) as info:
                dev.task()
            assert info.value.reason == "device_revoked"
        r = _qflare("device", "list", "--json", *common, cwd=tmp_path, env=env)
        assert {d["device_id"]: d["status"] for d in json.loads(r.stdout)}["edge_01"] == "revoked"
    finally:
        stop_process(proc)


def _wait_https(url: str, proc: subprocess.Popen[bytes], ctx: ssl.SSLContext) -> None:
    import time

    import httpx

    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError("server exited")
        try:
            if httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not up")
