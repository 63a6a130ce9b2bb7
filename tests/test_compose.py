"""The Compose federation's files (docker-compose.yml, docker/, configs/compose/): what `make compose-test` runs
for real (docs/deploy.md) is checked here without a daemon: services, the wiring of the KME pair and the
witness, and nothing of this machine's pip settings in a published file."""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
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


# docker/install-compose-v2.sh against a fake Debian mirror (file://, no network): it keeps the plugin only
# when InRelease verifies against the keyring and each checksum down the chain matches.
INSTALLER = ROOT / "docker" / "install-compose-v2.sh"


def _have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


@pytest.fixture
def fake_mirror(tmp_path: Path):
    if not _have("gpg", "gpgv", "dpkg-deb", "dpkg", "xz", "curl", "sha256sum"):
        pytest.skip("needs gpg, gpgv, dpkg-deb, xz and curl")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--batch", "--quiet", *args], env=env, check=True, capture_output=True, **kw)

    gpg("--passphrase", "", "--quick-gen-key", "mirror@test.invalid", "ed25519", "sign", "never")
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(gpg("--export", "mirror@test.invalid").stdout)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    mirror = tmp_path / "mirror"
    pkgroot = tmp_path / "pkg"
    plugin = pkgroot / "usr/libexec/docker/cli-plugins/docker-compose"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\necho 'Docker Compose version v2-fake'\n")
    (pkgroot / "DEBIAN").mkdir()
    (pkgroot / "DEBIAN/control").write_text(
        f"Package: docker-compose\nVersion: 2.0-test\nArchitecture: {arch}\nMaintainer: t <t@test.invalid>\n"
        "Description: test\n"
    )
    deb = mirror / "pool/main/d/docker-compose/docker-compose_2.0-test.deb"
    deb.parent.mkdir(parents=True)
    build = ["dpkg-deb", "--build", "--root-owner-group", str(pkgroot), str(deb)]
    subprocess.run(build, check=True, capture_output=True)

    def publish(*, deb_sum: str | None = None, index_sum: str | None = None, signed: bool = True) -> None:
        dists = mirror / "dists/trixie"
        (dists / f"main/binary-{arch}").mkdir(parents=True, exist_ok=True)
        stanza = (
            f"Package: docker-compose\nVersion: 2.0-test\nArchitecture: {arch}\n"
            f"Filename: pool/main/d/docker-compose/{deb.name}\n"
            f"SHA256: {deb_sum or hashlib.sha256(deb.read_bytes()).hexdigest()}\n\n"
        )
        packages = lzma.compress(("Package: other\nVersion: 1\n\n" + stanza).encode(), format=lzma.FORMAT_XZ)
        (dists / f"main/binary-{arch}/Packages.xz").write_bytes(packages)
        digest = index_sum or hashlib.sha256(packages).hexdigest()
        release = (
            f"Suite: trixie\nMD5Sum:\n 00000000000000000000000000000000 1 main/binary-{arch}/Packages.xz\n"
            f"SHA256:\n {digest} {len(packages)} main/binary-{arch}/Packages.xz\n"
        )
        if signed:
            (dists / "InRelease").write_bytes(gpg("--clearsign", "--output", "-", input=release.encode()).stdout)
        else:
            (dists / "InRelease").write_text(release)

    yield mirror, keyring, publish
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False)


def _install(mirror: Path, keyring: Path, dest: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_MIRROR": f"file://{mirror}", "DEBIAN_KEYRING": str(keyring)}
    return subprocess.run(["bash", str(INSTALLER), str(dest)], env=env, capture_output=True, text=True, timeout=120)


def test_compose_v2_is_installed_only_from_a_verified_chain(fake_mirror, tmp_path: Path) -> None:
    mirror, keyring, publish = fake_mirror
    publish()
    done = _install(mirror, keyring, tmp_path / "cfg")
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "cfg/cli-plugins/docker-compose"
    assert os.access(installed, os.X_OK) and "v2-fake" in installed.read_text()
    assert "signature and checksums verified" in done.stderr


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        ({"signed": False}, "does not verify"),
        ({"index_sum": "0" * 64}, "Packages.xz: SHA-256 mismatch"),
        ({"deb_sum": "0" * 64}, "SHA-256 mismatch"),
    ],
)
def test_compose_v2_installer_refuses_a_tampered_chain(fake_mirror, tmp_path: Path, tamper: dict, says: str) -> None:
    mirror, keyring, publish = fake_mirror
    publish(**tamper)
    done = _install(mirror, keyring, tmp_path / "cfg")
    assert done.returncode != 0
    assert says in done.stderr
    assert not (tmp_path / "cfg/cli-plugins/docker-compose").exists()
