"""Quotes from a simulated enclave and the pure verifier: every refusal reason, and what a valid quote proves."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.signing import SigningKey, VerifyKey
from qflare.enclave.client import Enclave, EnclaveIdentity
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.launcher import SimulatedLauncher, read_trust_root
from qflare.enclave.quote import (
    QUOTE_CONTEXT,
    EnclavePublicKeys,
    encode_simulated_quote,
    parse_quote,
    report_data_for,
)
from qflare.enclave.verify import AttestationPolicy, VerifiedQuote, verify_quote
from qflare.errors import AttestationError

NONCE = bytes(range(32))


class Attested:
    """A running simulated enclave, its identity and the verifier's trust root."""

    def __init__(self, enclave: Enclave, trust_root: VerifyKey) -> None:
        self.enclave = enclave
        self.identity: EnclaveIdentity = enclave.identity()
        self.trust_root = trust_root

    def verify(self, quote: bytes, **overrides: object) -> VerifiedQuote:
        args: dict[str, object] = {
            "trust_root": self.trust_root,
            "expected_measurement": self.identity.measurement,
            "expected_signer": self.identity.signer,
            "nonce": NONCE,
            "served_public_keys": self.identity.public_keys,
            "allow_simulated": True,
            "min_svn": 1,
        }
        args.update(overrides)
        return verify_quote(quote, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attested]:
    work = tmp_path_factory.mktemp("attested")
    launcher = SimulatedLauncher(work, config=EnclaveConfig(), signing_key=SigningKey.generate(), region_bytes=1 << 20)
    with Enclave(launcher) as enclave:
        yield Attested(enclave, read_trust_root(launcher.platform_dir))


@pytest.fixture(scope="module")
def quote(attested: Attested) -> bytes:
    return attested.enclave.quote(NONCE)


def reason(exc: pytest.ExceptionInfo[AttestationError]) -> str:
    return exc.value.reason


def test_a_valid_quote_binds_the_served_keys_to_the_measurement(attested: Attested, quote: bytes) -> None:
    # Execute
    verified = attested.verify(quote)

    # Assert
    assert verified.simulated and verified.format == "simulated"
    assert verified.measurement == attested.identity.measurement
    assert verified.signer == attested.identity.signer
    assert verified.isv_svn == 1 and not verified.debug
    assert verified.public_keys == attested.identity.public_keys
    assert parse_quote(quote).fields["report_data"] == report_data_for(verified.public_keys, NONCE).hex()  # type: ignore[union-attr]


def test_a_quote_from_another_measurement_is_refused(attested: Attested, quote: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, expected_measurement=b"\x01" * 32)
    assert reason(err) == "wrong_measurement"


def test_a_quote_from_another_signer_is_refused(attested: Attested, quote: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, expected_signer="ab" * 32)
    assert reason(err) == "wrong_signer"


def test_a_quote_for_an_old_nonce_is_refused(attested: Attested, quote: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, nonce=b"\xff" * 32)
    assert reason(err) == "stale_nonce"


def test_a_quote_with_a_bad_signature_is_refused(attested: Attested, quote: bytes) -> None:
    # Prepare
    flipped = bytearray(quote)
    flipped[-10] ^= 0x01

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        attested.verify(bytes(flipped))
    assert reason(err) == "bad_quote_signature"


def test_a_quote_signed_by_another_platform_is_refused(attested: Attested, quote: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, trust_root=SigningKey.generate().public_key())
    assert reason(err) == "bad_quote_signature"


def test_an_edited_quote_body_no_longer_verifies(attested: Attested, quote: bytes) -> None:
    # Prepare: raise the SVN in the body and keep the old signature
    parsed = parse_quote(quote)
    body = json.loads(parsed.body)  # type: ignore[union-attr]
    body["isv_svn"] = 9
    edited = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        attested.verify(encode_simulated_quote(edited, parsed.signature))  # type: ignore[union-attr]
    assert reason(err) == "bad_quote_signature"


def test_a_forged_quote_under_a_self_made_key_is_refused(attested: Attested, quote: bytes) -> None:
    # Prepare: an attacker re-signs the genuine body with its own key
    parsed = parse_quote(quote)
    forged = encode_simulated_quote(parsed.body, SigningKey.generate().sign(parsed.body, QUOTE_CONTEXT))  # type: ignore[union-attr]

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        attested.verify(forged)
    assert reason(err) == "bad_quote_signature"


def test_report_data_must_match_the_keys_the_server_served(attested: Attested, quote: bytes) -> None:
    # Prepare: a server swaps in its own KEM key next to a genuine quote
    swapped = replace(attested.identity.public_keys, kem=XWingPrivateKey.generate().public_key())

    # Execute / Assert
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, served_public_keys=swapped)
    assert reason(err) == "report_data_mismatch"


def test_a_simulated_quote_is_refused_unless_the_policy_allows_it(attested: Attested, quote: bytes) -> None:
    # Prepare
    production = AttestationPolicy(
        expected_measurement=attested.identity.measurement, expected_signer=attested.identity.signer
    )
    demo = replace(production, allow_simulated=True)

    # Execute
    with pytest.raises(AttestationError) as err:
        production.verify(quote, trust_root=attested.trust_root, nonce=NONCE,
                          served_public_keys=attested.identity.public_keys)  # fmt: skip
    verified = demo.verify(quote, trust_root=attested.trust_root, nonce=NONCE,
                           served_public_keys=attested.identity.public_keys)  # fmt: skip

    # Assert
    assert reason(err) == "simulated_not_allowed"
    assert verified.simulated


def test_a_quote_below_the_minimum_svn_is_refused(attested: Attested, quote: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        attested.verify(quote, min_svn=2)
    assert reason(err) == "svn_too_low"


def test_malformed_quotes_and_nonces_are_refused(attested: Attested, quote: bytes) -> None:
    # Prepare
    truncated = quote[:50]
    wrong_magic = b"XXXX" + quote[4:]
    bad_length = quote[:4] + struct.pack(">I", 10**6) + quote[8:]

    # Execute / Assert
    for bad in (truncated, wrong_magic, bad_length, b""):
        with pytest.raises(AttestationError) as err:
            attested.verify(bad)
        assert reason(err) == "malformed_quote"
    with pytest.raises(AttestationError) as short_nonce:
        attested.enclave.quote(b"short")
    assert reason(short_nonce) == "invalid_nonce"


def test_a_debug_enclave_quote_is_refused_unless_allowed(start_enclave: object, tmp_path: Path) -> None:
    # Prepare
    enclave = start_enclave(config=EnclaveConfig(debug=True))  # type: ignore[operator]
    identity = enclave.identity()
    trust_root = read_trust_root(enclave.launcher.platform_dir)
    quote = enclave.quote(NONCE)
    args = {
        "trust_root": trust_root,
        "expected_measurement": identity.measurement,
        "expected_signer": identity.signer,
        "nonce": NONCE,
        "served_public_keys": identity.public_keys,
        "allow_simulated": True,
        "min_svn": 1,
    }

    # Execute
    with pytest.raises(AttestationError) as err:
        verify_quote(quote, **args)  # type: ignore[arg-type]
    verified = verify_quote(quote, allow_debug=True, **args)  # type: ignore[arg-type]

    # Assert
    assert reason(err) == "debug_not_allowed"
    assert verified.debug


def test_public_keys_encoding_round_trips(attested: Attested) -> None:
    # Prepare
    keys = attested.identity.public_keys

    # Execute / Assert
    assert EnclavePublicKeys.decode(keys.encode()) == keys
