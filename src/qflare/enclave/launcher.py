"""Starting the enclave process: the two backends of :class:`~qflare.enclave.client.Enclave`.

- :class:`SimulatedLauncher` runs ``python -m qflare.enclave.trusted`` as an ordinary child process
  with a simulated platform (default).
- :class:`GramineLauncher` runs the same module under ``gramine-sgx`` with the manifest from
  :mod:`qflare.enclave.gramine` (needs an SGX machine with Gramine and DCAP set up).

Both give the enclave its channel on standard input/output and a shared memory region; both write the
enclave's standard error to ``<work_dir>/enclave.log``. Work directory layout::

    platform/            simulated platform secrets and trust root (only the enclave reads the secrets)
    state/               sealed enclave keys and round checkpoints
    enclave_config.json  the measured configuration
    sigstruct.bin        the SIGSTRUCT approving this build (simulated)
    enclave.log          the enclave process's standard error
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal, Protocol

from qflare.crypto import secret_access
from qflare.crypto.keyfile import UnencryptedKeyWarning, read_private_key, write_private_key
from qflare.crypto.signing import SigningKey, VerifyKey
from qflare.enclave.channel import SharedRegion
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.gramine import GramineEnvironment, default_template_path, render_manifest
from qflare.enclave.measurement import Measurement, measure
from qflare.enclave.sigstruct import sign_enclave
from qflare.enclave.trusted.platform import TRUST_ROOT_FILE
from qflare.errors import EnclaveError

__all__ = [
    "DEFAULT_REGION_BYTES",
    "GramineLauncher",
    "Launcher",
    "RunningEnclave",
    "SimulatedLauncher",
    "load_or_create_signing_key",
    "read_trust_root",
]

DEFAULT_REGION_BYTES: Final = 256 * 1024 * 1024
_ENTRY: Final = "qflare.enclave.trusted"


@dataclass
class RunningEnclave:
    """A started enclave process and the host's ends of its channel and region."""

    process: subprocess.Popen[bytes]
    write_fd: int
    read_fd: int
    region: SharedRegion
    log_path: Path
    cleanup: list[Path] = field(default_factory=list)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Wait for the process to exit (killing it after ``timeout``), then release everything."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.region.close()
        for path in self.cleanup:
            path.unlink(missing_ok=True)

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the enclave's standard error."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class Launcher(Protocol):
    """Starts enclave processes of one backend."""

    backend: Literal["simulated", "gramine"]

    def launch(self) -> RunningEnclave:
        """Start a new enclave process."""


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The enclave signing authority's key from ``path``, created (unencrypted, mode 0600) if missing.

    A development convenience, like ``gramine-sgx-gen-private-key``: a release signs with a key kept
    offline and ships the SIGSTRUCT instead.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with warnings.catch_warnings():
            # This function's docstring is the warning: a development signer.
            warnings.simplefilter("ignore", UnencryptedKeyWarning)
            write_private_key(path, SigningKey.generate(), token=secret_access.TOKEN, passphrase=None)
    key = read_private_key(path, token=secret_access.TOKEN, passphrase=None)
    if not isinstance(key, SigningKey):
        raise EnclaveError(f"{path} does not hold a signing key", reason="bad_launch")
    return key


def read_trust_root(platform_dir: Path) -> VerifyKey:
    """The simulated platform's public attestation key (what verifiers pin), from ``platform_dir``."""
    try:
        return VerifyKey.from_bytes((platform_dir / TRUST_ROOT_FILE).read_bytes())
    except OSError as exc:
        raise EnclaveError(
            f"no simulated platform trust root in {platform_dir} (start an enclave there first): {exc.strerror}",
            reason="platform_missing",
        ) from None


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "ab")


class SimulatedLauncher:
    """Runs the enclave as a child Python process on a simulated platform.

    Parameters
    ----------
    work_dir:
        Where the platform, sealed state, config, SIGSTRUCT and log live (see the module docstring).
    config:
        The enclave configuration (measured).
    sigstruct:
        A SIGSTRUCT for this build; when ``None``, one is signed with ``signing_key``.
    signing_key:
        The signing authority's key, used when no SIGSTRUCT is given.
    region_bytes:
        Size of the shared region; each half must hold the largest envelope, update or model.
    source_root:
        Run the enclave code from this directory (the parent of a ``qflare`` package) instead of the
        installed one; the measurement follows the code.
    python:
        The interpreter to run.
    """

    backend: Literal["simulated", "gramine"] = "simulated"

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        config: EnclaveConfig,
        sigstruct: bytes | None = None,
        signing_key: SigningKey | None = None,
        region_bytes: int = DEFAULT_REGION_BYTES,
        source_root: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.config = config
        self.platform_dir = self.work_dir / "platform"
        self.state_dir = self.work_dir / "state"
        self.config_path = self.work_dir / "enclave_config.json"
        self.sigstruct_path = self.work_dir / "sigstruct.bin"
        self.log_path = self.work_dir / "enclave.log"
        self.source_root = Path(source_root) if source_root is not None else None
        self.python = python or sys.executable
        self.region_bytes = region_bytes
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.write(self.config_path)
        if sigstruct is None:
            if signing_key is None:
                raise ValueError("give a SIGSTRUCT or the signing key to make one")
            sigstruct = sign_enclave(self.measurement().value, config, signing_key)
        self.sigstruct_path.write_bytes(sigstruct)

    def measurement(self) -> Measurement:
        """The measurement this launcher's enclave will report."""
        return measure(self.config, source_root=self.source_root)

    def trust_root(self) -> VerifyKey:
        """The simulated platform's trust root (after the first enclave start)."""
        return read_trust_root(self.platform_dir)

    def launch(self) -> RunningEnclave:
        region, fd = SharedRegion.create_memfd(self.region_bytes)
        argv = [
            self.python, "-m", _ENTRY,
            "--platform", "simulated",
            "--config", str(self.config_path),
            "--state-dir", str(self.state_dir),
            "--platform-dir", str(self.platform_dir),
            "--sigstruct", str(self.sigstruct_path),
            "--region-fd", str(fd),
        ]  # fmt: skip
        # A clean environment: nothing of the host's (tokens, PYTHON* settings) leaks in or steers imports.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONNOUSERSITE": "1"}  # fmt: skip
        if self.source_root is not None:
            env["PYTHONPATH"] = str(self.source_root)
        try:
            with _open_log(self.log_path) as log:
                process = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, pass_fds=(fd,),
                    env=env, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            region.close()
            raise
        finally:
            os.close(fd)
        assert process.stdin is not None and process.stdout is not None
        return RunningEnclave(
            process=process,
            write_fd=process.stdin.fileno(),
            read_fd=process.stdout.fileno(),
            region=region,
            log_path=self.log_path,
        )


class GramineLauncher:
    """Runs the enclave under ``gramine-sgx`` (SGX hardware with DCAP attestation required).

    Parameters
    ----------
    work_dir:
        Where the manifest, its signature, sealed state and the log go.
    config:
        The enclave configuration (written to ``work_dir`` and listed as a trusted file).
    gramine:
        Gramine's install paths; detected from ``gramine-manifest`` when ``None``.
    template:
        The manifest template; ``enclaves/qflare-enclave.manifest.template`` when ``None``.
    signing_key_pem:
        The RSA-3072 enclave signing key for ``gramine-sgx-sign`` (its hash is MRSIGNER); Gramine's
        default key when ``None``.
    region_bytes:
        Size of the shared region (a file in ``/dev/shm``, mounted ``untrusted_shm``).
    """

    backend: Literal["simulated", "gramine"] = "gramine"

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        config: EnclaveConfig,
        gramine: GramineEnvironment | None = None,
        template: Path | None = None,
        signing_key_pem: Path | None = None,
        region_bytes: int = DEFAULT_REGION_BYTES,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.config = config
        self.gramine = gramine
        self.template = template or default_template_path()
        self.signing_key_pem = signing_key_pem
        self.region_bytes = region_bytes
        self.state_dir = self.work_dir / "state"
        self.config_path = self.work_dir / "enclave_config.json"
        self.manifest_path = self.work_dir / "qflare-enclave.manifest"
        self.log_path = self.work_dir / "enclave.log"
        tag = hashlib.sha256(str(self.work_dir).encode()).hexdigest()[:16]
        self.region_path = Path("/dev/shm") / f"qflare-enclave-{tag}.region"

    def render(self) -> Path:
        """Write the config and the rendered manifest into ``work_dir``; returns the manifest path."""
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config.write(self.config_path)
        text = render_manifest(
            self.template.read_text(encoding="utf-8"),
            config=self.config,
            config_path=self.config_path,
            state_dir=self.state_dir,
            region_path=self.region_path,
            gramine=self.gramine or GramineEnvironment.detect(),
        )
        self.manifest_path.write_text(text, encoding="utf-8")
        return self.manifest_path

    def _tool(self, name: str) -> str:
        tool = shutil.which(name)
        if tool is None:
            raise EnclaveError(f"{name} is not installed: the Gramine backend needs Gramine on an SGX host",
                               reason="gramine_unavailable")  # fmt: skip
        return tool

    def sign(self) -> None:
        """Run ``gramine-sgx-sign`` on the rendered manifest (hashes trusted files, writes the SIGSTRUCT)."""
        argv = [self._tool("gramine-sgx-sign"), "--manifest", str(self.manifest_path),
                "--output", str(self.manifest_path) + ".sgx"]  # fmt: skip
        if self.signing_key_pem is not None:
            argv += ["--key", str(self.signing_key_pem)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.work_dir)
        if done.returncode != 0:
            raise EnclaveError(f"gramine-sgx-sign failed: {done.stderr.strip()[-500:]}", reason="gramine_sign_failed")

    def launch(self) -> RunningEnclave:
        gramine_sgx = self._tool("gramine-sgx")
        if not Path(str(self.manifest_path) + ".sgx").exists():
            self.render()
            self.sign()
        self.region_path.unlink(missing_ok=True)
        region = SharedRegion.create_file(self.region_path, self.region_bytes)
        try:
            with _open_log(self.log_path) as log:
                process = subprocess.Popen(
                    [gramine_sgx, "qflare-enclave"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    cwd=self.work_dir, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            region.close()
            self.region_path.unlink(missing_ok=True)
            raise
        assert process.stdin is not None and process.stdout is not None
        return RunningEnclave(
            process=process,
            write_fd=process.stdin.fileno(),
            read_fd=process.stdout.fileno(),
            region=region,
            log_path=self.log_path,
            cleanup=[self.region_path],
        )
