"""The Compose federation's files (docker-compose.yml, docker/, configs/compose/): what `make compose-test` runs
for real (docs/deploy.md) is checked here without a daemon: services, the wiring of the KME pair and the
witness, and nothing of this machine's pip settings in a published file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from qflare.config import load_global_config

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_compose_file_runs_every_service_of_the_federation() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "kme", "server", "witness", "provision", "edge_1", "edge_2", "edge_3"}
    for name in ("witness", "provision"):  # the server image, another entrypoint
        entry = services[name]["entrypoint"][0]
        assert services[name]["image"].startswith("qflare-server:")
        assert os.access(ROOT / entry.removeprefix("/app/"), os.X_OK), entry
    assert services["server"]["depends_on"]["kme"] == {"condition": "service_healthy"}
    assert services["provision"]["depends_on"]["witness"] == {"condition": "service_healthy"}


def test_the_kme_serves_each_edge_at_kme_a_and_the_server_at_kme_b() -> None:
    env = _compose()["services"]["kme"]["environment"]
    assert env["SAE_A"].split() == ["edge_1", "edge_2", "edge_3"] and env["SAE_B"].split() == ["server"]
    qkd = load_global_config(ROOT / "configs/compose/global_config.yaml").qkd
    assert qkd is not None and qkd.kme_url == "https://kme:8444" and qkd.cert.startswith("/state/kme-pki/")


def test_provisioned_edges_use_hybrid_keys_and_require_the_witness() -> None:
    script = (ROOT / "docker/provision-entrypoint.sh").read_text()
    for option in ("--key-source hybrid", "--kme-url https://kme:8443", "--kme-pki /state/kme-pki",
                   "--ledger-key /state/server-keys/ledger-log.pub", "--require-witnesses 1",
                   '--witness-key "$(cat /state/witness/witness.vkey)"'):
        assert option in script, option
    witness = (ROOT / "docker/witness-entrypoint.sh").read_text()
    assert "dir=/state/witness" in witness and "$dir/witness.vkey" in witness


def test_no_published_file_names_this_machines_pip_settings() -> None:
    """They reach the build only as compose-test.sh hands them over (a BuildKit secret, a bind mount)."""
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values = [v for v in re.findall(r"^[^=]+='(.*)'$", listed, flags=re.M) if len(v) > 3]
    published = [ROOT / "docker-compose.yml", *sorted((ROOT / "docker").glob("*.Dockerfile")),
                 *sorted((ROOT / "docker").glob("*-entrypoint.sh"))]
    for path in published:
        text = path.read_text()
        assert not re.search(r"index-url|trusted-host|/opt/pypi|PIP_CERT", text), path
        assert not [v for v in values if v in text], path
