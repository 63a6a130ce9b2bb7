"""The measurement covers exactly the enclave's code and config; a changed byte changes it, and the
enclave process loads nothing it did not measure."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest

from qflare.enclave.config import EnclaveConfig
from qflare.enclave.measurement import (
    ENCLAVE_MODULES,
    default_source_root,
    measure,
    signer_id,
    unmeasured_modules,
)
from qflare.enclave.testing import unsafe_read_sealed_key_seeds
from qflare.errors import EnclaveError

from .conftest import EnclaveFactory


def copy_sources(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(default_source_root() / "qflare", root / "qflare", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def flip_one_byte(path: Path) -> None:
    """Flip one bit of one letter in the module docstring: a modified module that still runs."""
    data = bytearray(path.read_bytes())
    first = data.index(b"\n")  # inside the docstring's first line, whatever the code below looks like
    at = next(i for i in range(first // 2, first) if chr(data[i]).isalpha())
    data[at] ^= 0x20  # swap the letter's case
    path.write_bytes(bytes(data))


def test_measurement_lists_every_enclave_module_once_in_order() -> None:
    # Execute
    m = measure(EnclaveConfig())

    # Assert
    assert [path for path, _ in m.files] == sorted(ENCLAVE_MODULES)
    assert len(set(ENCLAVE_MODULES)) == len(ENCLAVE_MODULES)
    assert len(m.value) == 32
    assert measure(EnclaveConfig()).value == m.value


def test_one_changed_byte_of_enclave_code_changes_the_measurement(tmp_path: Path) -> None:
    # Prepare
    root = copy_sources(tmp_path)
    before = measure(EnclaveConfig(), source_root=root)

    # Execute
    flip_one_byte(root / "qflare" / "enclave" / "trusted" / "runtime.py")
    after = measure(EnclaveConfig(), source_root=root)

    # Assert
    assert before.value == measure(EnclaveConfig()).value
    assert after.value != before.value
    changed = [path for (path, a), (_, b) in zip(before.files, after.files, strict=True) if a != b]
    assert changed == ["qflare/enclave/trusted/runtime.py"]


def test_config_and_runtime_versions_are_measured() -> None:
    # Prepare
    base = measure(EnclaveConfig())

    # Execute
    other_svn = measure(EnclaveConfig(isv_svn=2))
    other_norm = measure(EnclaveConfig(max_update_norm=5.0))
    other_numpy = measure(EnclaveConfig(), runtime={**base.runtime, "numpy": "0.0.1"})

    # Assert
    assert len({base.value, other_svn.value, other_norm.value, other_numpy.value}) == 4


def test_a_missing_enclave_file_is_refused(tmp_path: Path) -> None:
    # Prepare
    root = copy_sources(tmp_path)
    (root / "qflare" / "enclave" / "sealing.py").unlink()

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        measure(EnclaveConfig(), source_root=root)
    assert err.value.reason == "missing_enclave_file"


def test_unmeasured_modules_flags_qflare_code_outside_the_list() -> None:
    # Prepare
    root = default_source_root()
    measured = ModuleType("qflare.errors")
    measured.__file__ = str(root / "qflare" / "errors.py")
    server = ModuleType("qflare.server.app")
    server.__file__ = str(root / "qflare" / "server" / "app.py")
    outside = ModuleType("numpy")
    outside.__file__ = "/somewhere/numpy/__init__.py"

    # Execute
    bad = unmeasured_modules({"qflare.errors": measured, "qflare.server.app": server, "numpy": outside},
                             source_root=root)  # fmt: skip

    # Assert
    assert bad == ["qflare.server.app"]


def test_the_enclave_process_loads_only_measured_qflare_modules(start_enclave: EnclaveFactory) -> None:
    # Prepare
    measured = {rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for rel in ENCLAVE_MODULES}

    # Execute
    identity = start_enclave().identity()

    # Assert
    loaded = set(identity.modules)
    assert loaded <= measured
    assert {"qflare.enclave.trusted.runtime", "qflare.crypto.envelope", "qflare.fl.aggregate"} <= loaded
    assert not any(name.startswith(("qflare.server", "qflare.edge", "qflare.cli")) for name in loaded)


def test_the_enclave_reports_the_measurement_and_signer_of_its_build(
    start_enclave: EnclaveFactory, signer_key: object
) -> None:
    # Execute
    enclave = start_enclave()
    identity = enclave.identity()

    # Assert
    assert identity.measurement == measure(EnclaveConfig()).value
    assert identity.signer == signer_id(signer_key.public_key().to_bytes())  # type: ignore[attr-defined]
    assert identity.simulated and identity.platform == "simulated"
    assert identity.dumpable is False


def test_a_modified_enclave_gets_another_measurement_and_cannot_unseal_the_original_keys(
    tmp_path: Path, start_enclave: EnclaveFactory
) -> None:
    # Prepare: the original enclave seals its keys in work_dir
    work_dir = tmp_path / "shared"
    original = start_enclave(work_dir).identity()
    root = copy_sources(tmp_path)
    flip_one_byte(root / "qflare" / "enclave" / "trusted" / "rounds.py")
    modified_measurement = measure(EnclaveConfig(), source_root=root).value
    state = work_dir / "state"
    # The modified enclave will look for its sealed keys under its own measurement: give it the original's.
    shutil.copy(state / f"keys-{original.measurement.hex()[:16]}.sealed",
                state / f"keys-{modified_measurement.hex()[:16]}.sealed")  # fmt: skip

    # Execute
    with pytest.raises(EnclaveError) as err:
        start_enclave(work_dir, source_root=root)

    # Assert
    assert err.value.reason == "unseal_failed"
    assert modified_measurement != original.measurement
    kem_seed, _ = unsafe_read_sealed_key_seeds(work_dir, original.measurement)
    assert len(kem_seed) == 32  # the original's sealed keys still open with the original measurement


def test_a_modified_enclave_with_fresh_state_reports_its_own_measurement(
    tmp_path: Path, start_enclave: EnclaveFactory
) -> None:
    # Prepare
    root = copy_sources(tmp_path)
    flip_one_byte(root / "qflare" / "fl" / "aggregate.py")

    # Execute
    identity = start_enclave(source_root=root).identity()

    # Assert
    assert identity.measurement == measure(EnclaveConfig(), source_root=root).value
    assert identity.measurement != measure(EnclaveConfig()).value
