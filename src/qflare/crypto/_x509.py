"""X.509 building blocks for :mod:`qflare.crypto.tls` (the only place that touches hazmat for TLS).

Keys are ECDSA P-256 signed with SHA-256: supported by every TLS stack Python's ``ssl`` links
against, for TLS 1.2 and 1.3, server and client authentication.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _PycaInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qflare.errors import ConfigError, CryptoError

__all__ = ["build_ca", "build_leaf"]

_CLOCK_SKEW = _dt.timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise ConfigError("common name must be 1 to 64 characters", reason="invalid_common_name")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(now: _dt.datetime, valid_days: int) -> tuple[_dt.datetime, _dt.datetime]:
    if valid_days < 1:
        raise ConfigError("valid_days must be at least 1", reason="invalid_validity")
    if now.tzinfo is None:
        raise ConfigError("now must be timezone-aware", reason="naive_datetime")
    return now - _CLOCK_SKEW, now + _dt.timedelta(days=valid_days)


def _serial() -> int:
    # RFC 5280: positive, at most 20 octets. 159 random bits, top bit clear.
    return secrets.randbits(159) | 1


def build_ca(common_name: str, valid_days: int, now: _dt.datetime) -> tuple[bytes, bytes]:
    """Self-signed CA certificate (pathLen 0) and its key, both PEM."""
    key = _new_key()
    name = _name(common_name)
    not_before, not_after = _validity(now, valid_days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError):
        raise CryptoError("CA certificate or key does not parse", reason="bad_ca") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("CA key is not an EC key", reason="bad_ca")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CryptoError("CA key does not match the CA certificate", reason="bad_ca")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CryptoError("CA certificate has no basicConstraints", reason="bad_ca") from None
    if not constraints.ca:
        raise CryptoError("certificate is not a CA", reason="bad_ca")
    return cert, key


def _san(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    for text in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            raise ConfigError(f"not an IP address: {text!r}", reason="invalid_ip_address") from None
    return names


def build_leaf(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    *,
    server: bool,
    client: bool,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    valid_days: int,
    now: _dt.datetime,
) -> tuple[bytes, bytes]:
    """End-entity certificate for TLS server and/or client authentication, and its key, PEM."""
    if not (server or client):
        raise ConfigError("a certificate must allow server or client auth", reason="no_key_purpose")
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise ConfigError("dns_names and ip_addresses are sequences of strings", reason="invalid_san")
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    san = _san(dns_names, ip_addresses)
    if server and not san:
        raise ConfigError("a server certificate needs at least one DNS name or IP", reason="invalid_san")
    key = _new_key()
    not_before, not_after = _validity(now, valid_days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    purposes = []
    if server:
        purposes.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        purposes.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, _PycaInvalidSignature):  # pragma: no cover - defensive
        raise CryptoError("issued certificate does not verify", reason="bad_ca") from None
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
