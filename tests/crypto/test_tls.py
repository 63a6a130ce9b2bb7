"""TLS CA: server certs verify with Python ssl over loopback, mTLS client certs, key file modes."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from qflare.crypto.tls import create_ca, issue_cert, write_private_pem, write_public_pem
from qflare.errors import ConfigError, CryptoError


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("QFLARE test CA")


def _files(tmp: Path, name: str, cert: bytes, key: bytes) -> tuple[str, str]:
    return str(write_public_pem(tmp / f"{name}.crt", cert)), str(write_private_pem(tmp / f"{name}.key", key))


def _serve_once(server_ctx: ssl.SSLContext) -> tuple[int, threading.Thread, dict[str, object]]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def run() -> None:
        with listener:
            listener.settimeout(10)
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    result["peer"] = tls.getpeercert()
                    tls.sendall(tls.recv(16))
            except (ssl.SSLError, OSError) as exc:
                result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread, result


def _connect(port: int, client_ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(16)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_server_cert_verifies_against_ca(tmp_path: Path, ca: tuple[bytes, bytes], hostname: str) -> None:
    ca_cert, ca_key = ca
    cert, key = issue_cert(ca_cert, ca_key, "qflare-server")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp_path, "server", cert, key))
    client_ctx = ssl.create_default_context(cadata=ca_cert.decode())
    port, thread, _ = _serve_once(server_ctx)
    assert _connect(port, client_ctx, hostname) == b"ping"
    thread.join(10)


def test_mtls_client_cert(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    ca_cert, ca_key = ca
    s_cert, s_key = issue_cert(ca_cert, ca_key, "qflare-server")
    c_cert, c_key = issue_cert(ca_cert, ca_key, "device-0001", server=False, client=True, dns_names=(), ip_addresses=())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp_path, "server", s_cert, s_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=ca_cert.decode())
    client_ctx = ssl.create_default_context(cadata=ca_cert.decode())
    client_ctx.load_cert_chain(*_files(tmp_path, "client", c_cert, c_key))
    port, thread, result = _serve_once(server_ctx)
    assert _connect(port, client_ctx, "localhost") == b"ping"
    thread.join(10)
    subject = dict(item[0] for item in result["peer"]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "device-0001"


def test_other_ca_is_refused(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    other_cert, other_key = create_ca("other CA")
    cert, key = issue_cert(other_cert, other_key, "impostor")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp_path, "server", cert, key))
    client_ctx = ssl.create_default_context(cadata=ca[0].decode())
    port, thread, _ = _serve_once(server_ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(port, client_ctx, "localhost")
    thread.join(10)


def test_server_only_cert_is_refused_as_client_cert(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    ca_cert, ca_key = ca
    s_cert, s_key = issue_cert(ca_cert, ca_key, "qflare-server")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp_path, "server", s_cert, s_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=ca_cert.decode())
    client_ctx = ssl.create_default_context(cadata=ca_cert.decode())
    client_ctx.load_cert_chain(*_files(tmp_path, "client", s_cert, s_key))  # serverAuth only
    port, thread, result = _serve_once(server_ctx)
    with pytest.raises((ssl.SSLError, OSError)):
        _connect(port, client_ctx, "localhost")
    thread.join(10)
    assert "unsuitable certificate purpose" in str(result["error"])


def test_extensions(ca: tuple[bytes, bytes]) -> None:
    ca_cert, ca_key = ca
    ca_x = x509.load_pem_x509_certificate(ca_cert)
    assert ca_x.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_x.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert, _ = issue_cert(
        ca_cert,
        ca_key,
        "both",
        client=True,
        dns_names=["a.example", "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    leaf = x509.load_pem_x509_certificate(cert)
    leaf.verify_directly_issued_by(ca_x)
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert leaf.not_valid_after_utc <= ca_x.not_valid_after_utc


def test_time_is_a_parameter(ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert, _ = issue_cert(ca[0], ca[1], "later", now=now, valid_days=10)
    leaf = x509.load_pem_x509_certificate(cert)
    assert leaf.not_valid_before_utc < now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc == now + dt.timedelta(days=10)


def test_bad_inputs(ca: tuple[bytes, bytes]) -> None:
    ca_cert, ca_key = ca
    with pytest.raises(ConfigError):
        issue_cert(ca_cert, ca_key, "x", server=False, client=False)
    with pytest.raises(ConfigError):
        issue_cert(ca_cert, ca_key, "x", ip_addresses=["not-an-ip"])
    with pytest.raises(ConfigError):
        issue_cert(ca_cert, ca_key, "x", dns_names=(), ip_addresses=())
    with pytest.raises(CryptoError):
        issue_cert(ca_cert, create_ca("other")[1], "x")
    leaf_cert, leaf_key = issue_cert(ca_cert, ca_key, "leaf")
    with pytest.raises(CryptoError):
        issue_cert(leaf_cert, leaf_key, "x")
    with pytest.raises(CryptoError):
        issue_cert(b"garbage", ca_key, "x")


def test_private_pem_mode_0600(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    old = os.umask(0)
    try:
        path = write_private_pem(tmp_path / "ca.key", ca[1])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path = write_private_pem(tmp_path / "ca.key", ca[1])  # overwrite keeps 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert path.read_bytes() == ca[1]
    assert [p.name for p in tmp_path.iterdir()] == ["ca.key"]
