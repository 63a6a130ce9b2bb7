"""Mutual TLS for the KME service under uvicorn.

Uvicorn does not pass the peer certificate to the application, so :class:`MutualTLSProtocol` adds
it to the ASGI scope under ``extensions["tls"]`` (the ASGI TLS extension's ``client_cert_chain`` and
``client_cert_name``) when the connection is made.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MutualTLSProtocol", "fixed_context", "server_ssl_context"]

PathLike = str | os.PathLike[str]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def _tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return {
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
        "client_cert_name": cert.subject.rfc4514_string(),
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": (ssl_object.cipher() or ("",))[0],
    }


class MutualTLSProtocol(H11Protocol):
    """H11 protocol that exposes the verified client certificate to the app (ASGI TLS extension)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = _tls_extension(transport.get_extra_info("ssl_object"))
        inner: ASGIApp = self.app  # type: ignore[assignment]

        async def app_with_tls(
            scope: MutableMapping[str, Any],
            receive: Callable[[], Awaitable[Any]],
            send: Callable[[Any], Awaitable[None]],
        ) -> None:
            if tls is not None:
                scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = app_with_tls  # type: ignore[assignment]


def server_ssl_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """TLS >= 1.2 server context that requires a client certificate issued by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    ctx.load_verify_locations(cafile=os.fspath(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def fixed_context(ctx: ssl.SSLContext) -> Callable[[Any, Any], ssl.SSLContext]:
    """A uvicorn ``ssl_context_factory`` that always answers with ``ctx`` (our mutual-TLS context)."""

    def factory(_config: Any, _default: Any) -> ssl.SSLContext:
        return ctx

    return factory
