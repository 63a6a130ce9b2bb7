"""Attestation quote formats and the report data that binds the enclave's keys to a verifier's nonce.

Report data (64 bytes, the size of SGX ``REPORTDATA``)::

    report_data = SHA-512("qflare/v1/report-data" 0x00 || EnclavePublicKeys.encode() || nonce)

Two quote formats share one verifier (:func:`qflare.enclave.verify.verify_quote`):

- simulated (``QFQT``): ``magic | u32 len || canonical JSON body | u16 len || signature``; the body
  holds ``simulated: true``, measurement, signer, ISV product id and SVN, debug flag, nonce and report
  data, and is signed by the simulated platform's attestation key (the trust root).
- SGX DCAP under Gramine (``QFDC``): ``magic | u8 version | u32 len || raw DCAP quote | u8 len ||
  nonce``; the raw quote comes from ``/dev/attestation/quote`` and is signed by Intel's chain.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from qflare.crypto.kem import XWingPublicKey
from qflare.crypto.signing import SigningContext, VerifyKey
from qflare.errors import AttestationError, InvalidSignature, MalformedPayload

__all__ = [
    "DCAP_MAGIC",
    "MAX_NONCE_SIZE",
    "MIN_NONCE_SIZE",
    "QUOTE_CONTEXT",
    "SIM_QUOTE_FORMAT",
    "SIM_QUOTE_MAGIC",
    "DcapWrappedQuote",
    "EnclavePublicKeys",
    "SimulatedQuote",
    "check_nonce",
    "encode_dcap_wrapper",
    "encode_simulated_quote",
    "encode_simulated_quote_body",
    "parse_quote",
    "report_data_for",
]

SIM_QUOTE_MAGIC: Final = b"QFQT"
DCAP_MAGIC: Final = b"QFDC"
SIM_QUOTE_FORMAT: Final = "qflare-sim-quote/1"
QUOTE_CONTEXT: Final = SigningContext.ATTESTATION_QUOTE
MIN_NONCE_SIZE: Final = 16
MAX_NONCE_SIZE: Final = 64
_REPORT_DATA_DOMAIN: Final = b"qflare/v1/report-data\x00"
_MAX_QUOTE: Final = 65536


@dataclass(frozen=True)
class EnclavePublicKeys:
    """The public halves of the keys the enclave generated: X-Wing (requests) and composite signing."""

    kem: XWingPublicKey
    signing: VerifyKey

    def encode(self) -> bytes:
        """``u16 len || kem key || u16 len || signing key``: the canonical bytes in the report data."""
        kem, sig = self.kem.to_bytes(), self.signing.to_bytes()
        return struct.pack(">H", len(kem)) + kem + struct.pack(">H", len(sig)) + sig

    @classmethod
    def decode(cls, data: bytes) -> EnclavePublicKeys:
        """Parse :meth:`encode` output; raises ``MalformedPayload``."""
        raw = bytes(data)
        try:
            (klen,) = struct.unpack(">H", raw[:2])
            kem = raw[2 : 2 + klen]
            (slen,) = struct.unpack(">H", raw[2 + klen : 4 + klen])
            sig = raw[4 + klen :]
        except struct.error:
            raise MalformedPayload("truncated enclave public keys", reason="invalid_public_key") from None
        if len(kem) != klen or len(sig) != slen:
            raise MalformedPayload("enclave public keys have the wrong lengths", reason="invalid_public_key")
        return cls(kem=XWingPublicKey.from_bytes(kem), signing=VerifyKey.from_bytes(sig))


def check_nonce(nonce: bytes) -> bytes:
    """Return ``nonce`` as bytes if it is 16-64 bytes long, else raise ``AttestationError``."""
    if not isinstance(nonce, bytes | bytearray) or not MIN_NONCE_SIZE <= len(nonce) <= MAX_NONCE_SIZE:
        raise AttestationError(
            f"attestation nonce must be {MIN_NONCE_SIZE}-{MAX_NONCE_SIZE} bytes", reason="invalid_nonce"
        )
    return bytes(nonce)


def report_data_for(keys: EnclavePublicKeys, nonce: bytes) -> bytes:
    """The 64-byte report data binding ``keys`` to the verifier's ``nonce``."""
    return hashlib.sha512(_REPORT_DATA_DOMAIN + keys.encode() + check_nonce(nonce)).digest()


@dataclass(frozen=True)
class SimulatedQuote:
    """A parsed (not yet verified) simulated quote."""

    body: bytes
    signature: bytes
    fields: dict[str, Any]

    def verify_signature(self, trust_root: VerifyKey) -> None:
        """Raise ``AttestationError("bad_quote_signature")`` unless ``trust_root`` signed the body."""
        try:
            trust_root.verify(self.signature, self.body, QUOTE_CONTEXT)
        except InvalidSignature:
            raise AttestationError(
                "quote signature does not verify under the platform trust root", reason="bad_quote_signature"
            ) from None


@dataclass(frozen=True)
class DcapWrappedQuote:
    """A raw SGX DCAP quote from Gramine plus the nonce the enclave says it answered."""

    raw_quote: bytes
    nonce: bytes


def encode_simulated_quote_body(
    *,
    measurement: bytes,
    signer: bytes,
    isv_prod_id: int,
    isv_svn: int,
    debug: bool,
    nonce: bytes,
    report_data: bytes,
) -> bytes:
    """The canonical body the simulated platform signs."""
    doc = {
        "format": SIM_QUOTE_FORMAT,
        "simulated": True,
        "measurement": measurement.hex(),
        "signer": signer.hex(),
        "isv_prod_id": isv_prod_id,
        "isv_svn": isv_svn,
        "debug": debug,
        "nonce": nonce.hex(),
        "report_data": report_data.hex(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def encode_simulated_quote(body: bytes, signature: bytes) -> bytes:
    """``magic | u32 len || body | u16 len || signature``."""
    return SIM_QUOTE_MAGIC + struct.pack(">I", len(body)) + body + struct.pack(">H", len(signature)) + signature


def encode_dcap_wrapper(raw_quote: bytes, nonce: bytes) -> bytes:
    """Wrap a raw DCAP quote with the nonce it answers."""
    n = check_nonce(nonce)
    return DCAP_MAGIC + bytes([1]) + struct.pack(">I", len(raw_quote)) + bytes(raw_quote) + bytes([len(n)]) + n


def parse_quote(data: bytes) -> SimulatedQuote | DcapWrappedQuote:
    """Split a quote into its parts; checks structure only (no signature).

    Raises
    ------
    AttestationError
        ``reason="malformed_quote"``.
    """
    raw = bytes(data)
    bad = AttestationError("not a QFLARE attestation quote", reason="malformed_quote")
    if len(raw) > _MAX_QUOTE or len(raw) < 8:
        raise bad
    if raw[:4] == SIM_QUOTE_MAGIC:
        (blen,) = struct.unpack(">I", raw[4:8])
        body = raw[8 : 8 + blen]
        rest = raw[8 + blen :]
        if len(body) != blen or len(rest) < 2:
            raise bad
        (slen,) = struct.unpack(">H", rest[:2])
        signature = rest[2:]
        if len(signature) != slen:
            raise bad
        try:
            doc = json.loads(body)
        except ValueError:
            raise bad from None
        if not isinstance(doc, dict) or doc.get("format") != SIM_QUOTE_FORMAT:
            raise bad
        return SimulatedQuote(body=body, signature=signature, fields=doc)
    if raw[:4] == DCAP_MAGIC:
        if raw[4] != 1:
            raise bad
        (qlen,) = struct.unpack(">I", raw[5:9])
        quote = raw[9 : 9 + qlen]
        rest = raw[9 + qlen :]
        if len(quote) != qlen or len(rest) < 1 or len(rest) != 1 + rest[0]:
            raise bad
        return DcapWrappedQuote(raw_quote=quote, nonce=rest[1:])
    raise bad
