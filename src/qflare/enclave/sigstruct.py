"""The enclave signature structure (like SGX SIGSTRUCT): the signing authority approves one build.

The enclave's signing authority (the QFLARE release key) signs the measurement together with the
product id, security version and debug flag. At start-up the enclave checks that the SIGSTRUCT it
was given names exactly its own measurement and configuration; its signer identity (MRSIGNER) is then
the hash of the key that signed (:func:`qflare.enclave.measurement.signer_id`). Layout::

    magic "QFSS" | u32 len || canonical JSON statement | u16 len || composite signature

The statement carries ``"format": "qflare-enclave-sigstruct/1"``, which keeps it apart from every
other message signed in the same context (``qflare.crypto.contexts`` has no SIGSTRUCT member yet).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from qflare.crypto.signing import SigningContext, SigningKey, VerifyKey
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.measurement import signer_id
from qflare.errors import EnclaveError, InvalidSignature, MalformedPayload

__all__ = ["SIGSTRUCT_FORMAT", "SigStruct", "sign_enclave", "verify_sigstruct"]

SIGSTRUCT_FORMAT: Final = "qflare-enclave-sigstruct/1"
_MAGIC: Final = b"QFSS"
_CONTEXT: Final = SigningContext.ATTESTATION_QUOTE
_MAX_SIZE: Final = 16384


@dataclass(frozen=True)
class SigStruct:
    """A parsed, signature-checked SIGSTRUCT."""

    measurement: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    signer_public_key: VerifyKey

    @property
    def signer(self) -> bytes:
        """MRSIGNER: the hash of the signing authority's public key."""
        return signer_id(self.signer_public_key.to_bytes())


def _statement(measurement: bytes, config: EnclaveConfig, public_key: VerifyKey) -> bytes:
    doc = {
        "format": SIGSTRUCT_FORMAT,
        "measurement": measurement.hex(),
        "isv_prod_id": config.isv_prod_id,
        "isv_svn": config.isv_svn,
        "debug": config.debug,
        "signer_public_key": base64.b64encode(public_key.to_bytes()).decode("ascii"),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def sign_enclave(measurement: bytes, config: EnclaveConfig, signing_key: SigningKey) -> bytes:
    """Sign one enclave build: ``measurement`` (from :func:`~qflare.enclave.measurement.measure`) and ``config``."""
    if len(measurement) != 32:
        raise ValueError("measurement must be 32 bytes")
    body = _statement(measurement, config, signing_key.public_key())
    signature = signing_key.sign(body, _CONTEXT)
    return _MAGIC + struct.pack(">I", len(body)) + body + struct.pack(">H", len(signature)) + signature


def _malformed(message: str) -> EnclaveError:
    return EnclaveError(message, reason="malformed_sigstruct")


def _parse(blob: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    data = bytes(blob)
    if len(data) > _MAX_SIZE or len(data) < 10 or data[:4] != _MAGIC:
        raise _malformed("not a QFLARE SIGSTRUCT")
    (blen,) = struct.unpack(">I", data[4:8])
    body = data[8 : 8 + blen]
    rest = data[8 + blen :]
    if len(body) != blen or len(rest) < 2:
        raise _malformed("truncated SIGSTRUCT")
    (slen,) = struct.unpack(">H", rest[:2])
    signature = rest[2:]
    if len(signature) != slen:
        raise _malformed("SIGSTRUCT signature has the wrong length")
    try:
        doc = json.loads(body)
    except ValueError:
        raise _malformed("SIGSTRUCT statement is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGSTRUCT_FORMAT:
        raise _malformed("SIGSTRUCT statement has the wrong format")
    return body, doc, signature


def verify_sigstruct(blob: bytes, *, measurement: bytes, config: EnclaveConfig) -> SigStruct:
    """Check a SIGSTRUCT's signature and that it approves exactly ``measurement`` and ``config``.

    Raises
    ------
    EnclaveError
        ``reason`` ``"malformed_sigstruct"``, ``"bad_sigstruct_signature"`` or ``"sigstruct_mismatch"``
        (it signs another measurement, product id, security version or debug flag).
    """
    body, doc, signature = _parse(blob)
    try:
        key = VerifyKey.from_bytes(base64.b64decode(str(doc.get("signer_public_key", "")), validate=True))
    except (MalformedPayload, binascii.Error, ValueError):
        raise _malformed("SIGSTRUCT signer key does not parse") from None
    try:
        key.verify(signature, body, _CONTEXT)
    except InvalidSignature:
        raise EnclaveError("SIGSTRUCT signature does not verify", reason="bad_sigstruct_signature") from None
    if body != _statement(measurement, config, key):
        raise EnclaveError(
            "SIGSTRUCT approves another measurement or configuration than this enclave's",
            reason="sigstruct_mismatch",
        )
    return SigStruct(
        measurement=bytes(measurement),
        isv_prod_id=config.isv_prod_id,
        isv_svn=config.isv_svn,
        debug=config.debug,
        signer_public_key=key,
    )
