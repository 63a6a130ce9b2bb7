"""A private CA for QFLARE's TLS transport (server certificates and mTLS client certificates).

TLS protects the transport; the post-quantum request envelope (:mod:`qflare.crypto.envelope`)
protects every request end to end on top of it. Keys are ECDSA P-256 with SHA-256 signatures,
usable by Python's :mod:`ssl` for TLS 1.2/1.3 servers and clients.

Example
-------
>>> ca_cert, ca_key = create_ca("QFLARE test CA")
>>> cert, key = issue_cert(ca_cert, ca_key, "server", dns_names=["localhost"])
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

from qflare.crypto._files import write_file_atomic
from qflare.crypto._x509 import build_ca, build_leaf

__all__ = ["create_ca", "issue_cert", "write_private_pem", "write_public_pem"]


def _utcnow(now: _dt.datetime | None) -> _dt.datetime:
    return now if now is not None else _dt.datetime.now(_dt.UTC)


def create_ca(common_name: str, *, valid_days: int = 3650, now: _dt.datetime | None = None) -> tuple[bytes, bytes]:
    """Create a self-signed CA (basicConstraints CA, pathLen 0; keyCertSign, cRLSign).

    Parameters
    ----------
    common_name:
        Subject CN of the CA.
    valid_days:
        Validity from ``now`` (a 5-minute back-dating absorbs clock skew).
    now:
        Timezone-aware issuance time; the current UTC time when omitted.

    Returns
    -------
    tuple[bytes, bytes]
        ``(certificate PEM, unencrypted PKCS#8 private key PEM)``. Store the key with
        :func:`write_private_pem`.
    """
    return build_ca(common_name, valid_days, _utcnow(now))


def issue_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    *,
    server: bool = True,
    client: bool = False,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    valid_days: int = 825,
    now: _dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """Issue an end-entity certificate signed by the CA.

    The certificate has basicConstraints CA:FALSE, keyUsage digitalSignature (critical), an
    extendedKeyUsage of serverAuth and/or clientAuth, subject/authority key identifiers and a
    subjectAltName of ``dns_names`` and ``ip_addresses`` (hostname checks use the SAN, not the CN).

    Parameters
    ----------
    ca_cert_pem, ca_key_pem:
        The CA from :func:`create_ca`.
    common_name:
        Subject CN (for a device client certificate, its device id).
    server, client:
        Allowed purposes; at least one must be true.
    dns_names, ip_addresses:
        SAN entries; a server certificate needs at least one.
    valid_days:
        Validity, capped at the CA's own expiry.
    now:
        Timezone-aware issuance time; the current UTC time when omitted.

    Returns
    -------
    tuple[bytes, bytes]
        ``(certificate PEM, unencrypted PKCS#8 private key PEM)``.

    Raises
    ------
    ConfigError
        No purpose, a bad IP address, an empty SAN for a server, a bad validity.
    CryptoError
        The CA certificate/key do not parse, do not match, or the certificate is not a CA.
    """
    return build_leaf(
        ca_cert_pem,
        ca_key_pem,
        common_name,
        server=server,
        client=client,
        dns_names=tuple(dns_names) if not isinstance(dns_names, str) else dns_names,
        ip_addresses=tuple(ip_addresses) if not isinstance(ip_addresses, str) else ip_addresses,
        valid_days=valid_days,
        now=_utcnow(now),
    )


def write_private_pem(path: str | os.PathLike[str], pem: bytes) -> Path:
    """Write a private key PEM atomically, mode 0600 (regardless of umask). Returns the path."""
    return write_file_atomic(path, pem, mode=0o600)


def write_public_pem(path: str | os.PathLike[str], pem: bytes) -> Path:
    """Write a certificate or public PEM atomically, mode 0644. Returns the path."""
    return write_file_atomic(path, pem, mode=0o644)
