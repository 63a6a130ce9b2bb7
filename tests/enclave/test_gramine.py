"""The Gramine-SGX path, as far as it runs without SGX: the manifest, the DCAP quote fields, the
``/dev/attestation`` plumbing (against a stand-in directory), and a clear refusal where hardware is needed."""

from __future__ import annotations

import hashlib
import shutil
import struct
import sys
import tomllib
from pathlib import Path

import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.dcap import parse_dcap_quote
from qflare.enclave.gramine import GramineEnvironment, default_template_path, render_manifest
from qflare.enclave.launcher import GramineLauncher
from qflare.enclave.measurement import default_source_root, measure
from qflare.enclave.quote import EnclavePublicKeys, encode_dcap_wrapper, report_data_for
from qflare.enclave.trusted.platform import PlatformIdentity, SgxPlatform
from qflare.enclave.verify import verify_quote
from qflare.errors import AttestationError, EnclaveError

FAKE_GRAMINE = GramineEnvironment(libos="/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
                                  runtimedir="/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc")  # fmt: skip
MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(32, 64))
NONCE = b"n" * 32


def report_body(*, mrenclave: bytes, mrsigner: bytes, prod_id: int, svn: int, debug: bool, report_data: bytes) -> bytes:
    body = bytearray(384)
    body[48:56] = (0x04 | (0x02 if debug else 0)).to_bytes(8, "little")  # MODE64BIT | DEBUG
    body[64:96] = mrenclave
    body[128:160] = mrsigner
    body[256:260] = struct.pack("<HH", prod_id, svn)
    body[320:384] = report_data
    return bytes(body)


def dcap_quote(body: bytes, *, version: int = 3) -> bytes:
    header = struct.pack("<HHIHH", version, 2, 0, 7, 11) + bytes(16) + bytes(20)
    signature_data = b"\x01" * 100  # stands in for the ECDSA signature, QE report and PCK chain
    return header + body + struct.pack("<I", len(signature_data)) + signature_data


@pytest.fixture
def keys() -> EnclavePublicKeys:
    from qflare.crypto.kem import XWingPrivateKey

    return EnclavePublicKeys(kem=XWingPrivateKey.generate().public_key(), signing=SigningKey.generate().public_key())


def rendered(tmp_path: Path, config: EnclaveConfig) -> tuple[dict[str, object], str]:
    launcher = GramineLauncher(tmp_path / "gramine", config=config, gramine=FAKE_GRAMINE)
    text = launcher.render().read_text()
    return tomllib.loads(text), text


# -- manifest -------------------------------------------------------------------------------------


def test_the_manifest_runs_the_enclave_module_under_sgx(tmp_path: Path) -> None:
    # Execute
    manifest, _ = rendered(tmp_path, EnclaveConfig())

    # Assert
    assert manifest["libos"]["entrypoint"] == str(Path(sys.executable).resolve())  # type: ignore[index]
    argv = manifest["loader"]["argv"]  # type: ignore[index]
    assert argv[1:5] == ["-m", "qflare.enclave.trusted", "--platform", "sgx"]
    assert manifest["loader"]["entrypoint"]["uri"] == f"file:{FAKE_GRAMINE.libos}"  # type: ignore[index]
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"  # type: ignore[index]
    assert sgx["file_check_policy"] == "strict"  # type: ignore[index]
    assert (sgx["isvprodid"], sgx["isvsvn"], sgx["debug"]) == (1, 1, False)  # type: ignore[index]


def test_the_manifest_trusts_exactly_the_measured_files_with_their_hashes(tmp_path: Path) -> None:
    # Prepare
    config = EnclaveConfig(isv_svn=4, debug=True)
    root = default_source_root().resolve()

    # Execute
    manifest, _ = rendered(tmp_path, config)

    # Assert
    entries = [e for e in manifest["sgx"]["trusted_files"] if isinstance(e, dict)]  # type: ignore[index]
    qflare = {
        Path(e["uri"].removeprefix("file:")).relative_to(root).as_posix(): e["sha256"]
        for e in entries
        if e["uri"].startswith(f"file:{root}/")
    }
    assert qflare == dict(measure(config).files)
    config_entry = [e for e in entries if e["uri"].endswith("enclave_config.json")]
    config_file = Path(config_entry[0]["uri"].removeprefix("file:"))
    assert config_entry[0]["sha256"] == hashlib.sha256(config_file.read_bytes()).hexdigest()
    assert EnclaveConfig.from_json(config_file.read_bytes()) == config
    assert (manifest["sgx"]["isvsvn"], manifest["sgx"]["debug"]) == (4, True)  # type: ignore[index]


def test_the_manifest_mounts_untrusted_shared_memory_and_allows_only_state_and_region(tmp_path: Path) -> None:
    # Execute
    manifest, _ = rendered(tmp_path, EnclaveConfig())

    # Assert
    mounts = manifest["fs"]["mounts"]  # type: ignore[index]
    assert {"type": "untrusted_shm", "path": "/dev/shm", "uri": "dev:/dev/shm"} in mounts
    allowed = manifest["sgx"]["allowed_files"]  # type: ignore[index]
    assert len(allowed) == 2
    assert allowed[0].endswith("/gramine/state/") and allowed[1].startswith("file:/dev/shm/qflare-enclave-")


def test_a_template_placeholder_without_a_value_is_refused(tmp_path: Path) -> None:
    # Prepare
    template = default_template_path().read_text() + '\nextra = "{{ not_a_variable }}"\n'
    config_path = EnclaveConfig().write(tmp_path / "c.json")

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        render_manifest(template, config=EnclaveConfig(), config_path=config_path, state_dir=tmp_path,
                        region_path=Path("/dev/shm/x"), gramine=FAKE_GRAMINE)  # fmt: skip
    assert err.value.reason == "bad_manifest_template"


@pytest.mark.skipif(shutil.which("gramine-sgx") is not None, reason="Gramine is installed here")
def test_launching_under_gramine_without_gramine_is_refused_clearly(tmp_path: Path) -> None:
    # Prepare
    launcher = GramineLauncher(tmp_path, config=EnclaveConfig(), gramine=FAKE_GRAMINE)

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        launcher.launch()
    assert err.value.reason == "gramine_unavailable"


# -- DCAP quotes ----------------------------------------------------------------------------------


def test_dcap_quote_fields_are_read_from_the_intel_layout() -> None:
    # Prepare
    body = report_body(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, prod_id=1, svn=3, debug=True, report_data=b"r" * 64)

    # Execute
    quote = parse_dcap_quote(dcap_quote(body))

    # Assert
    assert (quote.mr_enclave, quote.mr_signer) == (MRENCLAVE, MRSIGNER)
    assert (quote.isv_prod_id, quote.isv_svn, quote.debug) == (1, 3, True)
    assert quote.report_data == b"r" * 64
    assert (quote.qe_svn, quote.pce_svn) == (7, 11)


@pytest.mark.parametrize("mutate", ["truncate", "version", "sig_len"])
def test_malformed_dcap_quotes_are_refused(mutate: str) -> None:
    # Prepare
    raw = bytearray(dcap_quote(report_body(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, prod_id=1, svn=1, debug=False,
                                           report_data=bytes(64))))  # fmt: skip
    if mutate == "truncate":
        raw = raw[:400]
    elif mutate == "version":
        raw[0] = 2
    else:
        raw[432] ^= 0x01

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        parse_dcap_quote(bytes(raw))
    assert err.value.reason == "malformed_quote"


def test_an_sgx_quote_needs_a_signature_chain_verifier(keys: EnclavePublicKeys) -> None:
    # Prepare
    body = report_body(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, prod_id=1, svn=2, debug=False,
                       report_data=report_data_for(keys, NONCE))  # fmt: skip
    wrapped = encode_dcap_wrapper(dcap_quote(body), NONCE)
    checked: list[bytes] = []

    def chain_verifier_double(raw: bytes) -> None:  # test double for Intel's ECDSA/PCK chain check
        checked.append(raw)

    args = {"trust_root": None, "expected_measurement": MRENCLAVE, "expected_signer": MRSIGNER, "nonce": NONCE,
            "served_public_keys": keys, "allow_simulated": False, "min_svn": 2}  # fmt: skip

    # Execute
    with pytest.raises(AttestationError) as err:
        verify_quote(wrapped, **args)  # type: ignore[arg-type]
    verified = verify_quote(wrapped, dcap_verifier=chain_verifier_double, **args)  # type: ignore[arg-type]

    # Assert
    assert err.value.reason == "dcap_verifier_unavailable"
    assert checked == [dcap_quote(body)]
    assert verified.format == "sgx-dcap" and not verified.simulated
    assert (verified.measurement, verified.signer, verified.isv_svn) == (MRENCLAVE, MRSIGNER, 2)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"expected_measurement": b"\x00" * 32}, "wrong_measurement"),
        ({"expected_signer": b"\x00" * 32}, "wrong_signer"),
        ({"min_svn": 3}, "svn_too_low"),
        ({"nonce": b"m" * 32}, "stale_nonce"),
    ],
)
def test_sgx_quote_fields_are_checked_like_simulated_ones(
    keys: EnclavePublicKeys, override: dict[str, object], expected: str
) -> None:
    # Prepare
    body = report_body(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, prod_id=1, svn=2, debug=False,
                       report_data=report_data_for(keys, NONCE))  # fmt: skip
    args: dict[str, object] = {"trust_root": None, "expected_measurement": MRENCLAVE, "expected_signer": MRSIGNER,
                               "nonce": NONCE, "served_public_keys": keys, "allow_simulated": False, "min_svn": 2,
                               "dcap_verifier": lambda raw: None}  # fmt: skip
    args.update(override)

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        verify_quote(encode_dcap_wrapper(dcap_quote(body), NONCE), **args)  # type: ignore[arg-type]
    assert err.value.reason == expected


# -- /dev/attestation -----------------------------------------------------------------------------


def fake_attestation_dir(tmp_path: Path, quote: bytes, report: bytes) -> Path:
    """Stand-in for Gramine's pseudo-files (static contents: no SGX here)."""
    d = tmp_path / "attestation"
    (d / "keys").mkdir(parents=True)
    (d / "keys" / "_sgx_mrenclave").write_bytes(b"k" * 16)
    (d / "my_target_info").write_bytes(b"t" * 512)
    (d / "quote").write_bytes(quote)
    (d / "report").write_bytes(report + bytes(48))
    return d


def test_the_sgx_platform_writes_report_data_and_wraps_the_quote(tmp_path: Path) -> None:
    # Prepare
    body = report_body(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, prod_id=1, svn=5, debug=False, report_data=bytes(64))
    directory = fake_attestation_dir(tmp_path, dcap_quote(body), body)
    platform = SgxPlatform(directory)
    identity = PlatformIdentity(MRENCLAVE, MRSIGNER, 1, 5, False)

    # Execute
    wrapped = platform.quote(identity, report_data=b"d" * 64, nonce=NONCE)

    # Assert
    assert (directory / "user_report_data").read_bytes() == b"d" * 64
    assert wrapped == encode_dcap_wrapper(dcap_quote(body), NONCE)
    assert platform.sealing_root() == b"k" * 16
    assert platform.self_identity() == identity
    assert (directory / "target_info").read_bytes() == b"t" * 512


def test_the_sgx_platform_is_refused_outside_gramine(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError) as err:
        SgxPlatform(tmp_path)
    assert err.value.reason == "sgx_unavailable"
