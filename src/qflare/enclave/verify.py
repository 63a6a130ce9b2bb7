"""Verifying an enclave's quote: the pure check an edge node runs before it trusts enclave keys.

:func:`verify_quote` takes the quote bytes and everything the verifier expects, and returns the
verified facts or raises :class:`~qflare.errors.AttestationError` with one of these reasons, checked
in this order:

``malformed_quote``, ``simulated_not_allowed``, ``no_trust_root``, ``bad_quote_signature``,
``dcap_verifier_unavailable``, ``debug_not_allowed``, ``wrong_measurement``, ``wrong_signer``,
``wrong_product``, ``svn_too_low``, ``stale_nonce``, ``report_data_mismatch``.

The nonce is the verifier's fresh challenge; the report data in the quote must equal
``SHA-512(domain || served public keys || nonce)``, which ties the keys the server handed out to this
enclave and this challenge (:func:`qflare.enclave.quote.report_data_for`).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from qflare.crypto.signing import VerifyKey
from qflare.enclave.dcap import parse_dcap_quote
from qflare.enclave.quote import (
    DcapWrappedQuote,
    EnclavePublicKeys,
    SimulatedQuote,
    check_nonce,
    parse_quote,
    report_data_for,
)
from qflare.errors import AttestationError

__all__ = ["AttestationPolicy", "DcapSignatureVerifier", "VerifiedQuote", "verify_quote"]

DcapSignatureVerifier = Callable[[bytes], None]
"""Checks a raw DCAP quote's ECDSA signature chain up to Intel's root and its TCB status; raises
``AttestationError`` (``bad_quote_signature``, ``tcb_out_of_date``, ...) or returns ``None``."""

_HEX32: Final = re.compile(r"[0-9a-f]{64}")
_HEX: Final = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True)
class VerifiedQuote:
    """What a verified quote establishes."""

    format: Literal["simulated", "sgx-dcap"]
    simulated: bool
    measurement: bytes
    signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    nonce: bytes
    public_keys: EnclavePublicKeys


def _as_bytes32(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        if not _HEX32.fullmatch(value.lower()):
            raise ValueError(f"{what} must be 64 hex digits")
        return bytes.fromhex(value)
    if len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes")
    return bytes(value)


def _malformed() -> AttestationError:
    return AttestationError("quote fields are malformed", reason="malformed_quote")


def _field_hex(fields: dict[str, Any], name: str, size: int | None) -> bytes:
    value = fields.get(name)
    if not isinstance(value, str) or not _HEX.fullmatch(value) or (size is not None and len(value) != 2 * size):
        raise _malformed()
    return bytes.fromhex(value)


def _field_int(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise _malformed()
    return value


def _field_bool(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if not isinstance(value, bool):
        raise _malformed()
    return value


@dataclass(frozen=True)
class _Claims:
    simulated: bool
    measurement: bytes
    signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    nonce: bytes
    report_data: bytes


def _simulated_claims(quote: SimulatedQuote, trust_root: VerifyKey | None, allow_simulated: bool) -> _Claims:
    fields = quote.fields
    if fields.get("simulated") is not True:
        raise _malformed()
    if not allow_simulated:
        raise AttestationError(
            "this is a simulated enclave, and the policy does not allow simulated enclaves",
            reason="simulated_not_allowed",
        )
    if trust_root is None:
        raise AttestationError("no trust root for simulated quotes was given", reason="no_trust_root")
    quote.verify_signature(trust_root)
    return _Claims(
        simulated=True,
        measurement=_field_hex(fields, "measurement", 32),
        signer=_field_hex(fields, "signer", 32),
        isv_prod_id=_field_int(fields, "isv_prod_id"),
        isv_svn=_field_int(fields, "isv_svn"),
        debug=_field_bool(fields, "debug"),
        nonce=_field_hex(fields, "nonce", None),
        report_data=_field_hex(fields, "report_data", 64),
    )


def _dcap_claims(quote: DcapWrappedQuote, dcap_verifier: DcapSignatureVerifier | None) -> _Claims:
    parsed = parse_dcap_quote(quote.raw_quote)
    if dcap_verifier is None:
        raise AttestationError(
            "an SGX DCAP quote needs a signature-chain verifier (Intel collateral); none was given",
            reason="dcap_verifier_unavailable",
        )
    dcap_verifier(quote.raw_quote)
    return _Claims(
        simulated=False,
        measurement=parsed.mr_enclave,
        signer=parsed.mr_signer,
        isv_prod_id=parsed.isv_prod_id,
        isv_svn=parsed.isv_svn,
        debug=parsed.debug,
        nonce=quote.nonce,
        report_data=parsed.report_data,
    )


def verify_quote(
    quote_bytes: bytes,
    *,
    trust_root: VerifyKey | None,
    expected_measurement: bytes | str,
    expected_signer: bytes | str,
    nonce: bytes,
    served_public_keys: EnclavePublicKeys,
    allow_simulated: bool,
    min_svn: int,
    allow_debug: bool = False,
    expected_prod_id: int | None = None,
    dcap_verifier: DcapSignatureVerifier | None = None,
) -> VerifiedQuote:
    """Verify an enclave quote against what the verifier expects.

    Parameters
    ----------
    quote_bytes:
        The quote the server returned for ``nonce``.
    trust_root:
        The simulated platform's attestation public key (``None`` when only SGX quotes are expected).
    expected_measurement, expected_signer:
        The pinned measurement (MRENCLAVE on SGX) and signer (MRSIGNER), 32 bytes or 64 hex digits.
    nonce:
        The verifier's fresh challenge (16-64 bytes).
    served_public_keys:
        The enclave public keys the server handed out with the quote.
    allow_simulated:
        Accept a simulated enclave (demos; never in production).
    min_svn:
        Lowest acceptable security version.
    allow_debug:
        Accept a debug enclave (its memory is readable by a debugger).
    expected_prod_id:
        Require this product id when given.
    dcap_verifier:
        Checks an SGX quote's signature chain; required for SGX quotes.

    Raises
    ------
    AttestationError
        With the reasons listed in the module docstring.
    """
    measurement = _as_bytes32(expected_measurement, "expected_measurement")
    signer = _as_bytes32(expected_signer, "expected_signer")
    nonce = check_nonce(nonce)
    parsed = parse_quote(quote_bytes)
    if isinstance(parsed, SimulatedQuote):
        claims = _simulated_claims(parsed, trust_root, allow_simulated)
    else:
        claims = _dcap_claims(parsed, dcap_verifier)
    if claims.debug and not allow_debug:
        raise AttestationError("this is a debug enclave", reason="debug_not_allowed")
    if not hmac.compare_digest(claims.measurement, measurement):
        raise AttestationError(
            f"enclave measurement {claims.measurement.hex()[:16]}... is not the expected {measurement.hex()[:16]}...",
            reason="wrong_measurement",
        )
    if not hmac.compare_digest(claims.signer, signer):
        raise AttestationError("enclave signer is not the expected one", reason="wrong_signer")
    if expected_prod_id is not None and claims.isv_prod_id != expected_prod_id:
        raise AttestationError(f"enclave product id is {claims.isv_prod_id}", reason="wrong_product")
    if claims.isv_svn < min_svn:
        raise AttestationError(f"enclave security version {claims.isv_svn} is below {min_svn}", reason="svn_too_low")
    if not hmac.compare_digest(claims.nonce, nonce):
        raise AttestationError("the quote answers another challenge", reason="stale_nonce")
    if not hmac.compare_digest(claims.report_data, report_data_for(served_public_keys, nonce)):
        raise AttestationError(
            "the quote does not bind the public keys the server served", reason="report_data_mismatch"
        )
    return VerifiedQuote(
        format="simulated" if claims.simulated else "sgx-dcap",
        simulated=claims.simulated,
        measurement=claims.measurement,
        signer=claims.signer,
        isv_prod_id=claims.isv_prod_id,
        isv_svn=claims.isv_svn,
        debug=claims.debug,
        nonce=nonce,
        public_keys=served_public_keys,
    )


@dataclass(frozen=True)
class AttestationPolicy:
    """An edge node's attestation policy: what it pins and what it tolerates.

    The defaults are the production ones: simulated and debug enclaves are refused.

    Parameters
    ----------
    expected_measurement, expected_signer:
        The pinned measurement and signer (hex or bytes).
    min_svn:
        Lowest acceptable security version.
    allow_simulated:
        Accept simulated enclaves (the demo sets this; production must not).
    allow_debug:
        Accept debug enclaves.
    expected_prod_id:
        Require this product id when given.
    """

    expected_measurement: bytes | str
    expected_signer: bytes | str
    min_svn: int = 1
    allow_simulated: bool = False
    allow_debug: bool = False
    expected_prod_id: int | None = None

    def verify(
        self,
        quote_bytes: bytes,
        *,
        trust_root: VerifyKey | None,
        nonce: bytes,
        served_public_keys: EnclavePublicKeys,
        dcap_verifier: DcapSignatureVerifier | None = None,
    ) -> VerifiedQuote:
        """:func:`verify_quote` under this policy."""
        return verify_quote(
            quote_bytes,
            trust_root=trust_root,
            expected_measurement=self.expected_measurement,
            expected_signer=self.expected_signer,
            nonce=nonce,
            served_public_keys=served_public_keys,
            allow_simulated=self.allow_simulated,
            min_svn=self.min_svn,
            allow_debug=self.allow_debug,
            expected_prod_id=self.expected_prod_id,
            dcap_verifier=dcap_verifier,
        )
