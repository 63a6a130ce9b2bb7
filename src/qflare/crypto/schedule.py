"""The one-request key schedule (suite 1): two single-use AES-256 keys per request.

::

    th     = SHA-256(header)                                   transcript hash
    IKM    = ss                  key_source = mlkem             (ss: 32-byte X-Wing secret)
           = qk                  key_source = qkd               (qk: QKD key, >= 32 bytes)
           = ss || qk            key_source = hybrid
    PRK    = HKDF-Extract(salt = "qflare/v1/suite1/extract", IKM)
    k_req  = HKDF-Expand(PRK, info = "qflare/v1/suite1/k_req"  || th, 32)
    k_resp = HKDF-Expand(PRK, info = "qflare/v1/suite1/k_resp" || th, 32)

In ``hybrid`` mode HKDF-Extract over the concatenation of both secrets is the combiner of the TLS
1.3 hybrid design (draft-ietf-tls-hybrid-design): the output is pseudorandom as long as either
secret is. ``ss`` has a fixed length, so the concatenation is unambiguous. The transcript hash
binds both keys to every header field (including the random nonce, so keys never repeat even if a
QKD key were reused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from qflare.crypto._kdf import hkdf_expand, hkdf_extract
from qflare.crypto._xwing import SHARED_SECRET_SIZE
from qflare.crypto.encoding import KeySource

__all__ = [
    "EXTRACT_SALT",
    "INFO_REQUEST",
    "INFO_RESPONSE",
    "MIN_QKD_KEY_SIZE",
    "RequestKeys",
    "derive_request_keys",
]

EXTRACT_SALT: Final = b"qflare/v1/suite1/extract"
INFO_REQUEST: Final = b"qflare/v1/suite1/k_req"
INFO_RESPONSE: Final = b"qflare/v1/suite1/k_resp"
MIN_QKD_KEY_SIZE: Final = 32
MAX_QKD_KEY_SIZE: Final = 1024


@dataclass(frozen=True)
class RequestKeys:
    """The derived keys of one request. Internal to the envelope; exposed for test vectors."""

    transcript_hash: bytes
    k_req: bytes = field(repr=False)
    k_resp: bytes = field(repr=False)


def derive_request_keys(
    header_bytes: bytes, key_source: KeySource, *, kem_secret: bytes | None, qkd_key: bytes | None
) -> RequestKeys:
    """Run the key schedule for one request.

    Parameters
    ----------
    header_bytes:
        The canonical header (its SHA-256 is the transcript hash).
    key_source:
        Which secrets feed the schedule; exactly those must be given.
    kem_secret:
        The 32-byte X-Wing shared secret (``mlkem``, ``hybrid``), else ``None``.
    qkd_key:
        The QKD key, 32 to 1024 bytes (``qkd``, ``hybrid``), else ``None``.
    """
    key_source = KeySource(key_source)
    wants_kem = key_source in (KeySource.MLKEM, KeySource.HYBRID)
    wants_qkd = key_source in (KeySource.QKD, KeySource.HYBRID)
    if wants_kem != (kem_secret is not None) or wants_qkd != (qkd_key is not None):
        raise ValueError(f"key source {key_source.value} needs exactly its own secrets")
    ikm = b""
    if kem_secret is not None:
        if len(kem_secret) != SHARED_SECRET_SIZE:
            raise ValueError("KEM secret must be 32 bytes")
        ikm += kem_secret
    if qkd_key is not None:
        if not MIN_QKD_KEY_SIZE <= len(qkd_key) <= MAX_QKD_KEY_SIZE:
            raise ValueError("QKD key must be 32 to 1024 bytes")
        ikm += qkd_key
    th = hashlib.sha256(header_bytes).digest()
    prk = hkdf_extract(EXTRACT_SALT, ikm)
    return RequestKeys(
        transcript_hash=th,
        k_req=hkdf_expand(prk, INFO_REQUEST + th, 32),
        k_resp=hkdf_expand(prk, INFO_RESPONSE + th, 32),
    )
