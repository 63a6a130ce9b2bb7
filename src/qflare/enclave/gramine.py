"""The Gramine-SGX manifest: rendering ``enclaves/qflare-enclave.manifest.template``.

The template uses ``{{ name }}`` placeholders only (no Jinja logic), so it renders here without
extra dependencies; ``qflare_trusted_files`` expands to one ``{ uri, sha256 }`` entry per file of
:data:`~qflare.enclave.measurement.ENCLAVE_MODULES`, with the same hashes that enter the simulated
measurement. Gramine then refuses to open any QFLARE file that is not listed (strict file policy),
so inside SGX exactly the measured modules can be loaded.

The rendered manifest is signed with ``gramine-sgx-sign`` (which hashes the remaining trusted
directories: the interpreter, its standard library and site-packages) and run with ``gramine-sgx``
(:class:`~qflare.enclave.launcher.GramineLauncher`). Nothing here needs SGX; running does.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qflare.enclave.config import EnclaveConfig
from qflare.enclave.measurement import Measurement, default_source_root, measure
from qflare.errors import EnclaveError

__all__ = [
    "ENTRY_MODULE",
    "GramineEnvironment",
    "default_template_path",
    "render_manifest",
]

ENTRY_MODULE: Final = "qflare.enclave.trusted"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
_SAFE_VALUE: Final = re.compile(r'[^"\\\n]*')


def default_template_path() -> Path:
    """``enclaves/qflare-enclave.manifest.template`` of the checkout this package runs from."""
    return default_source_root().parent / "enclaves" / "qflare-enclave.manifest.template"


@dataclass(frozen=True)
class GramineEnvironment:
    """Where Gramine is installed on the SGX host.

    Parameters
    ----------
    libos:
        Path of ``libsysdb.so`` (Jinja ``gramine.libos``).
    runtimedir:
        Gramine's glibc runtime directory (``gramine.runtimedir()``).
    arch_libdir:
        The host's multiarch library directory.
    """

    libos: str
    runtimedir: str
    arch_libdir: str = "/lib/x86_64-linux-gnu"

    @classmethod
    def detect(cls) -> GramineEnvironment:
        """Ask the installed ``gramine-manifest`` tool for its paths.

        Raises
        ------
        EnclaveError
            ``reason="gramine_unavailable"`` when Gramine is not installed.
        """
        tool = shutil.which("gramine-manifest")
        if tool is None:
            raise EnclaveError("gramine-manifest is not installed", reason="gramine_unavailable")
        probe = "{{ gramine.libos }}\n{{ gramine.runtimedir() }}\n{{ arch_libdir }}\n"
        out = subprocess.run([tool, "-", "-"], input=probe, capture_output=True, text=True, check=False, timeout=60)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or len(lines) != 3:
            raise EnclaveError(f"gramine-manifest failed: {out.stderr.strip()[:200]}", reason="gramine_unavailable")
        return cls(libos=lines[0], runtimedir=lines[1], arch_libdir=lines[2])


def _toml_path(value: str | Path, what: str) -> str:
    text = str(value)
    if not _SAFE_VALUE.fullmatch(text):
        raise EnclaveError(f"{what} contains a quote, backslash or newline: {text!r}", reason="bad_manifest_value")
    return text


def trusted_file_entries(measurement: Measurement, source_root: Path) -> list[tuple[str, str]]:
    """``(uri, sha256)`` for every measured QFLARE file, in measurement order."""
    return [(f"file:{_toml_path(source_root / rel, 'source path')}", digest) for rel, digest in measurement.files]


def render_manifest(
    template: str,
    *,
    config: EnclaveConfig,
    config_path: Path,
    state_dir: Path,
    region_path: Path,
    gramine: GramineEnvironment,
    source_root: Path | None = None,
    python: Path | None = None,
    log_level: str = "error",
    enclave_size: str = "2G",
    max_threads: int = 8,
) -> str:
    """Render the manifest template for one enclave instance.

    Raises
    ------
    EnclaveError
        ``reason="bad_manifest_template"``: a placeholder without a value;
        ``"bad_manifest_value"``: a path that cannot go into a TOML string.
    """
    root = (source_root or default_source_root()).resolve()
    measurement = measure(config, source_root=root)
    interpreter = (python or Path(sys.executable)).resolve()
    paths = sysconfig.get_paths()
    config_bytes = config_path.read_bytes()
    if EnclaveConfig.from_json(config_bytes) != config:
        raise EnclaveError(
            f"{config_path} does not hold the enclave config being rendered", reason="bad_manifest_value"
        )
    entries = trusted_file_entries(measurement, root)
    values = {
        "python": _toml_path(interpreter, "python"),
        "python_stdlib": _toml_path(paths["stdlib"], "stdlib"),
        "site_packages": _toml_path(paths["purelib"], "site-packages"),
        "python_prefix": _toml_path(sys.prefix, "prefix"),
        "entry_module": ENTRY_MODULE,
        "source_root": _toml_path(root, "source root"),
        "config_path": _toml_path(config_path.resolve(), "config path"),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "state_dir": _toml_path(state_dir.resolve(), "state dir"),
        "region_path": _toml_path(region_path, "region path"),
        "gramine_libos": _toml_path(gramine.libos, "libos"),
        "gramine_runtimedir": _toml_path(gramine.runtimedir, "runtimedir"),
        "arch_libdir": _toml_path(gramine.arch_libdir, "arch libdir"),
        "log_level": _toml_path(log_level, "log level"),
        "sgx_debug": "true" if config.debug else "false",
        "isv_prod_id": str(config.isv_prod_id),
        "isv_svn": str(config.isv_svn),
        "enclave_size": _toml_path(enclave_size, "enclave size"),
        "max_threads": str(int(max_threads)),
        "measurement": measurement.hex,
        "qflare_trusted_files": "\n".join(f'  {{ uri = "{uri}", sha256 = "{sha}" }},' for uri, sha in entries),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise EnclaveError(f"manifest template placeholder {name!r} has no value", reason="bad_manifest_template")
        return values[name]

    return _PLACEHOLDER.sub(substitute, template)
