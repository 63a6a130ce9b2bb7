"""SIGSTRUCT: the signing authority approves exactly one measurement and configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.client import Enclave
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.launcher import SimulatedLauncher
from qflare.enclave.measurement import measure, signer_id
from qflare.enclave.sigstruct import sign_enclave, verify_sigstruct
from qflare.errors import EnclaveError

CONFIG = EnclaveConfig()
MEASUREMENT = measure(CONFIG).value


def test_a_sigstruct_names_its_signer(signer_key: SigningKey) -> None:
    # Prepare
    blob = sign_enclave(MEASUREMENT, CONFIG, signer_key)

    # Execute
    parsed = verify_sigstruct(blob, measurement=MEASUREMENT, config=CONFIG)

    # Assert
    assert parsed.signer == signer_id(signer_key.public_key().to_bytes())
    assert (parsed.isv_svn, parsed.debug) == (CONFIG.isv_svn, CONFIG.debug)


@pytest.mark.parametrize(
    ("measurement", "config"),
    [(b"\x00" * 32, CONFIG), (MEASUREMENT, EnclaveConfig(isv_svn=2)), (MEASUREMENT, EnclaveConfig(debug=True))],
)
def test_a_sigstruct_for_another_build_is_refused(
    signer_key: SigningKey, measurement: bytes, config: EnclaveConfig
) -> None:
    # Prepare
    blob = sign_enclave(MEASUREMENT, CONFIG, signer_key)

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        verify_sigstruct(blob, measurement=measurement, config=config)
    assert err.value.reason == "sigstruct_mismatch"


def test_a_tampered_or_truncated_sigstruct_is_refused(signer_key: SigningKey) -> None:
    # Prepare
    blob = bytearray(sign_enclave(MEASUREMENT, CONFIG, signer_key))
    blob[-1] ^= 0x80

    # Execute / Assert
    with pytest.raises(EnclaveError) as bad_sig:
        verify_sigstruct(bytes(blob), measurement=MEASUREMENT, config=CONFIG)
    with pytest.raises(EnclaveError) as truncated:
        verify_sigstruct(bytes(blob[:100]), measurement=MEASUREMENT, config=CONFIG)
    assert bad_sig.value.reason == "bad_sigstruct_signature"
    assert truncated.value.reason == "malformed_sigstruct"


def test_the_enclave_refuses_to_start_under_a_sigstruct_for_another_build(
    tmp_path: Path, signer_key: SigningKey
) -> None:
    # Prepare
    other = sign_enclave(measure(EnclaveConfig(isv_svn=9)).value, EnclaveConfig(isv_svn=9), signer_key)
    enclave = Enclave(SimulatedLauncher(tmp_path, config=CONFIG, sigstruct=other, region_bytes=1 << 20))

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        enclave.start()
    assert err.value.reason == "sigstruct_mismatch"
    assert not enclave.running
