"""The enclave's measurement (like SGX MRENCLAVE) and its signer identity (like MRSIGNER).

The measurement is a SHA-256 over, in this order::

    "qflare-enclave-measurement/v1\\n"
    for each file of ENCLAVE_MODULES (sorted by path):  path "\\0" sha256(file bytes) hex "\\n"
    "runtime\\0" canonical JSON of {python, numpy, cryptography, safetensors versions} "\\n"
    "config\\0" EnclaveConfig.canonical_json() "\\n"

:data:`ENCLAVE_MODULES` is the exact list of QFLARE modules that run inside the enclave process; the
enclave refuses to start when it has imported any other ``qflare`` module (see
:func:`unmeasured_modules`). Third-party packages (numpy, cryptography, safetensors) and the Python
interpreter are covered by their versions only; under Gramine they are trusted files, hashed into
MRENCLAVE (``docs/enclave.md``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

from qflare.enclave.config import EnclaveConfig
from qflare.errors import EnclaveError

__all__ = [
    "ENCLAVE_MODULES",
    "MEASUREMENT_DOMAIN",
    "Measurement",
    "default_source_root",
    "measure",
    "runtime_versions",
    "signer_id",
    "unmeasured_modules",
]

MEASUREMENT_DOMAIN: Final = b"qflare-enclave-measurement/v1\n"
_SIGNER_DOMAIN: Final = b"qflare-enclave-signer/v1\x00"

ENCLAVE_MODULES: Final[tuple[str, ...]] = tuple(
    sorted(
        [
            "qflare/__init__.py",
            "qflare/errors.py",
            "qflare/types.py",
            # crypto: KEM decapsulation, envelope decryption, signing, AEAD
            "qflare/crypto/__init__.py",
            "qflare/crypto/_aead.py",
            "qflare/crypto/_composite.py",
            "qflare/crypto/_ed25519_note.py",
            "qflare/crypto/_kdf.py",
            "qflare/crypto/_random.py",
            "qflare/crypto/_xwing.py",
            "qflare/crypto/aead.py",
            "qflare/crypto/contexts.py",
            "qflare/crypto/encoding.py",
            "qflare/crypto/envelope.py",
            "qflare/crypto/kem.py",
            "qflare/crypto/schedule.py",
            "qflare/crypto/secret_access.py",
            "qflare/crypto/signing.py",
            # fl: parsing, validation, streaming FedAvg, robust rules (numpy only)
            "qflare/fl/__init__.py",
            "qflare/fl/aggregate.py",
            "qflare/fl/checks.py",
            "qflare/fl/serialize.py",
            "qflare/fl/spec.py",
            "qflare/fl/strategies/__init__.py",
            "qflare/fl/strategies/base.py",
            "qflare/fl/strategies/fedavg.py",
            "qflare/fl/strategies/robust.py",
            "qflare/fl/strategies/fltrust.py",  # FLTrust; its root-update code is listed below
            "qflare/fl/robust.py",
            "qflare/fl/influence.py",
            "qflare/fl/optimizers.py",
            "qflare/fl/strategies/server_opt.py",
            "qflare/fl/privacy.py",  # central DP wrappers (EnclaveConfig.privacy); the accountant stays on the host
            "qflare/fl/noise.py",  # the DP noise sampler (ChaCha20 key stream)
            # FLTrust (aggregation.rule: fltrust): the rule, and the torch code that builds the root data set
            # from the task's shipped data and trains the root update inside (imported only by that rule)
            "qflare/fl/root.py",
            "qflare/fl/tasks/__init__.py",
            "qflare/fl/tasks/base.py",
            "qflare/fl/tasks/digits.py",
            "qflare/fl/tasks/forecast.py",
            "qflare/fl/train.py",
            "qflare/fl/training_config.py",
            "qflare/fl/models/__init__.py",
            "qflare/fl/models/base.py",
            "qflare/fl/models/cnn.py",
            "qflare/fl/models/gru.py",
            "qflare/fl/data/__init__.py",
            "qflare/fl/data/city.py",
            "qflare/fl/data/csv_series.py",
            "qflare/fl/data/digits.py",
            "qflare/fl/data/partition.py",
            "qflare/fl/data/series.py",
            "qflare/fl/data/windows.py",
            # ledger: checkpoint parsing and signed-note signing (sign_note). Importing qflare.ledger.note
            # runs the package's __init__, which imports every (pure) ledger module, so all are measured.
            "qflare/ledger/__init__.py",
            "qflare/ledger/checkpoint.py",
            "qflare/ledger/cosignature.py",
            "qflare/ledger/entries.py",
            "qflare/ledger/log.py",
            "qflare/ledger/merkle.py",
            "qflare/ledger/note.py",
            "qflare/ledger/store.py",
            "qflare/ledger/tiles.py",
            "qflare/ledger/witness.py",
            # the enclave itself: shared formats and the trusted side
            "qflare/enclave/__init__.py",
            "qflare/enclave/channel.py",
            "qflare/enclave/config.py",
            "qflare/enclave/ecalls.py",
            "qflare/enclave/measurement.py",
            "qflare/enclave/quote.py",
            "qflare/enclave/registry.py",
            "qflare/enclave/sealing.py",
            "qflare/enclave/sigstruct.py",
            "qflare/enclave/statements.py",
            "qflare/enclave/stored.py",
            "qflare/enclave/trusted/__init__.py",
            "qflare/enclave/trusted/__main__.py",
            "qflare/enclave/trusted/boot.py",
            "qflare/enclave/trusted/platform.py",
            "qflare/enclave/trusted/registry_store.py",
            "qflare/enclave/trusted/rounds.py",
            "qflare/enclave/trusted/runtime.py",
            "qflare/enclave/trusted/storage.py",
        ]
    )
)
"""Paths relative to the directory that holds the ``qflare`` package, in canonical (sorted) order."""


def default_source_root() -> Path:
    """The directory that holds the installed ``qflare`` package (``src/`` in a checkout)."""
    import qflare

    return Path(qflare.__file__).resolve().parent.parent


@dataclass(frozen=True)
class Measurement:
    """An enclave measurement and what went into it.

    Attributes
    ----------
    value:
        The 32-byte SHA-256 measurement.
    files:
        ``(path, sha256 hex)`` of every measured file, in measurement order.
    runtime:
        The third-party versions that were measured.
    config:
        The measured configuration.
    """

    value: bytes
    files: tuple[tuple[str, str], ...]
    runtime: Mapping[str, str]
    config: EnclaveConfig

    @property
    def hex(self) -> str:
        """Lower-case hex of :attr:`value`."""
        return self.value.hex()


def runtime_versions() -> dict[str, str]:
    """Versions of the interpreter and third-party packages the enclave code runs on."""
    import cryptography
    import numpy
    import safetensors

    return {
        "python": f"{platform.python_implementation()}-{sys.version_info.major}.{sys.version_info.minor}",
        "numpy": numpy.__version__,
        "cryptography": cryptography.__version__,
        "safetensors": safetensors.__version__,
    }


def measure(
    config: EnclaveConfig,
    *,
    source_root: str | Path | None = None,
    modules: Iterable[str] = ENCLAVE_MODULES,
    runtime: Mapping[str, str] | None = None,
) -> Measurement:
    """Measure the enclave code under ``source_root`` together with ``config``.

    Raises
    ------
    EnclaveError
        ``reason="missing_enclave_file"`` when a listed module does not exist.
    """
    root = Path(source_root) if source_root is not None else default_source_root()
    versions = dict(runtime) if runtime is not None else runtime_versions()
    h = hashlib.sha256(MEASUREMENT_DOMAIN)
    listed: list[tuple[str, str]] = []
    for rel in sorted(modules):
        try:
            digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        except OSError:
            raise EnclaveError(f"enclave file {rel} is missing under {root}", reason="missing_enclave_file") from None
        listed.append((rel, digest))
        h.update(rel.encode("utf-8") + b"\x00" + digest.encode("ascii") + b"\n")
    runtime_json = json.dumps(versions, sort_keys=True, separators=(",", ":")).encode("ascii")
    h.update(b"runtime\x00" + runtime_json + b"\n")
    h.update(b"config\x00" + config.canonical_json() + b"\n")
    return Measurement(value=h.digest(), files=tuple(listed), runtime=versions, config=config)


def signer_id(public_key_bytes: bytes) -> bytes:
    """The 32-byte signer identity: SHA-256 over the enclave signing authority's public key."""
    return hashlib.sha256(_SIGNER_DOMAIN + bytes(public_key_bytes)).digest()


def unmeasured_modules(
    loaded: Mapping[str, ModuleType | None], *, source_root: str | Path, modules: Iterable[str] = ENCLAVE_MODULES
) -> list[str]:
    """Names of loaded ``qflare`` modules whose file is not one of the measured ``modules``."""
    root = Path(source_root).resolve()
    measured = {(root / rel).resolve() for rel in modules}
    bad: list[str] = []
    for name, module in loaded.items():
        if module is None or not (name == "qflare" or name.startswith("qflare.") or _is_qflare_main(module)):
            continue
        file = getattr(module, "__file__", None)
        if file is None or Path(file).resolve() not in measured:
            bad.append(name)
    return sorted(bad)


def _is_qflare_main(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return spec is not None and isinstance(spec.name, str) and spec.name.startswith("qflare.")
