"""Fields of an Intel SGX DCAP (ECDSA) quote, version 3 or 4, as Gramine's ``/dev/attestation/quote``
returns it.

Layout (little-endian)::

    header      48 bytes   version u16 | attestation key type u16 | TEE type u32 | QE SVN u16 |
                           PCE SVN u16 | QE vendor id 16 | user data 20
    report body 384 bytes  CPUSVN 16 | MISCSELECT 4 | reserved 28 | ATTRIBUTES 16 (flags 8, xfrm 8) |
                           MRENCLAVE 32 | reserved 32 | MRSIGNER 32 | reserved 96 | ISVPRODID u16 |
                           ISVSVN u16 | reserved 60 | REPORTDATA 64
    u32 signature data length, then the signature data (ECDSA signature over header || body, the
    attestation key, the QE report and its signature, QE authentication data, PCK certificate chain)

This module only reads the fields. Checking the signature chain (quote signature -> attestation key
-> QE report -> PCK certificate -> Intel SGX Root CA, plus TCB status and revocation lists) needs
ECDSA P-256 and X.509 path validation with Intel's collateral; that is a
:data:`~qflare.enclave.verify.DcapSignatureVerifier` the deployment supplies (``docs/enclave.md``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from qflare.errors import AttestationError

__all__ = ["DcapQuote", "parse_dcap_quote"]

_HEADER: Final = 48
_BODY: Final = 384
_ATT_KEY_ECDSA_P256: Final = 2
_TEE_SGX: Final = 0
_FLAG_DEBUG: Final = 0x02


@dataclass(frozen=True)
class DcapQuote:
    """The identity fields of an SGX DCAP quote (signature not checked)."""

    version: int
    attestation_key_type: int
    qe_svn: int
    pce_svn: int
    cpu_svn: bytes
    attributes_flags: int
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    signed_bytes: bytes
    signature_data: bytes

    @property
    def debug(self) -> bool:
        """``ATTRIBUTES.DEBUG``: the enclave's memory can be read by a debugger."""
        return bool(self.attributes_flags & _FLAG_DEBUG)


def parse_dcap_quote(raw: bytes) -> DcapQuote:
    """Read an SGX ECDSA quote (v3, or v4 with TEE type SGX).

    Raises
    ------
    AttestationError
        ``reason="malformed_quote"``: too short, another version, key type or TEE type, or a signature
        data length that does not match.
    """
    data = bytes(raw)
    bad = AttestationError("not an SGX DCAP ECDSA quote", reason="malformed_quote")
    if len(data) < _HEADER + _BODY + 4:
        raise bad
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack("<HHIHH", data[:12])
    if version not in (3, 4) or key_type != _ATT_KEY_ECDSA_P256 or (version == 4 and tee_type != _TEE_SGX):
        raise bad
    body = data[_HEADER : _HEADER + _BODY]
    (sig_len,) = struct.unpack("<I", data[_HEADER + _BODY : _HEADER + _BODY + 4])
    signature_data = data[_HEADER + _BODY + 4 :]
    if len(signature_data) != sig_len:
        raise bad
    isv_prod_id, isv_svn = struct.unpack("<HH", body[256:260])
    return DcapQuote(
        version=version,
        attestation_key_type=key_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        cpu_svn=body[0:16],
        attributes_flags=int.from_bytes(body[48:56], "little"),
        mr_enclave=body[64:96],
        mr_signer=body[128:160],
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=body[320:384],
        signed_bytes=data[: _HEADER + _BODY],
        signature_data=signature_data,
    )
