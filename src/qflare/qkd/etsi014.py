"""ETSI GS QKD 014 V1.1.1 REST key delivery: a simulated KME pair (server) and :class:`KMEClient`.

This is the only module of :mod:`qflare.qkd` that speaks HTTP. Routes (``{slave}``/``{master}`` are
SAE IDs; ``size`` is in bits; keys travel base64-encoded; JSON names exactly as in the standard)::

    GET       /api/v1/keys/{slave_SAE_ID}/status      -> Status
    GET|POST  /api/v1/keys/{slave_SAE_ID}/enc_keys    number, size -> Key container   (master SAE)
    GET|POST  /api/v1/keys/{master_SAE_ID}/dec_keys   key_ID / key_IDs -> Key container (slave SAE)

Errors are ``{"message": ..., "details": [{"reason": <QKDError reason>}]}`` with status 400 (bad
request: size, count, unknown or reused key_ID), 401 (SAE not authenticated or not authorised) or
503 (the KME cannot serve: out of key).

Transport is HTTPS with mutual TLS: the KME requires a client certificate issued by its CA, and the
caller's SAE ID is the certificate's subject common name (never a header or a parameter). Uvicorn
does not pass the peer certificate to the application, so :class:`_MutualTLSProtocol` adds it to the
ASGI scope under ``extensions["tls"]`` (the ASGI TLS extension's ``client_cert_chain`` and
``client_cert_name``) when the connection is made.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from qflare.errors import QKDError
from qflare.qkd.kme import KeyStore, QKDKey

__all__ = [
    "KMEClient",
    "KMEEnd",
    "KMEListener",
    "KMEPairServer",
    "KMEStatus",
    "create_kme_app",
    "server_ssl_context",
]

_API = "/api/v1/keys"
PathLike = str | os.PathLike[str]

# ---------------------------------------------------------------------------------------------------
# Wire format (ETSI GS QKD 014 section 6). Extensions are accepted and ignored unless mandatory.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class KMEStatus(_Wire):
    """Status data format (ETSI GS QKD 014, 6.1)."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int


class _KeyRequest(_Wire):
    number: int = 1
    size: int | None = None
    additional_slave_SAE_IDs: list[str] = Field(default_factory=list)
    extension_mandatory: list[dict[str, Any]] = Field(default_factory=list)
    extension_optional: list[dict[str, Any]] = Field(default_factory=list)


class _KeyIDItem(_Wire):
    key_ID: str


class _KeyIDs(_Wire):
    key_IDs: list[_KeyIDItem]


class _KeyItem(_Wire):
    key_ID: str
    key: str


class _KeyContainer(_Wire):
    keys: list[_KeyItem]


class _ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Server: FastAPI app per KME end


@dataclass(frozen=True)
class KMEEnd:
    """One end of the KME pair.

    Parameters
    ----------
    kme_id:
        This KME's ID (``source_KME_ID``/``target_KME_ID`` in status responses).
    sae_ids:
        SAEs attached to this KME (their certificate CNs); ``None`` accepts any SAE whose
        certificate the CA issued.
    """

    kme_id: str
    sae_ids: frozenset[str] | None = None

    def serves(self, sae_id: str) -> bool:
        return self.sae_ids is None or sae_id in self.sae_ids


_STATUS_OF_REASON = {
    "unauthenticated": 401,
    "sae_not_authorised": 401,
    "out_of_key": 503,
}


def _error_response(status: int, message: str, reason: str) -> JSONResponse:
    return JSONResponse({"message": message, "details": [{"reason": reason}]}, status_code=status)


def _caller_sae_id(request: Request) -> str:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    if not isinstance(name, str):
        raise QKDError("a client certificate is required", reason="unauthenticated")
    try:
        cns = x509.Name.from_rfc4514_string(name).get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        cns = []
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise QKDError("client certificate has no single common name", reason="unauthenticated")
    return cns[0].value


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _container(keys: Sequence[QKDKey]) -> dict[str, Any]:
    return {"keys": [{"key_ID": k.key_id, "key": _b64(k.key)} for k in keys]}


def create_kme_app(store: KeyStore, local: KMEEnd, remote: KMEEnd) -> FastAPI:
    """The ETSI 014 API of KME ``local``, whose peer across the (simulated) QKD link is ``remote``.

    A master SAE attached to ``local`` gets keys for a slave SAE attached to ``remote`` (enc_keys);
    a slave SAE attached to ``local`` fetches keys a master attached to ``remote`` obtained (dec_keys).
    """
    app = FastAPI(title=f"QFLARE simulated KME {local.kme_id}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(QKDError)
    async def _qkd_error(_: Request, exc: QKDError) -> JSONResponse:
        return _error_response(_STATUS_OF_REASON.get(exc.reason, 400), exc.message, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response(400, f"bad request: {where}: {first.get('msg', 'invalid')}", "bad_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), "bad_request")

    def peer_sae(caller: str, other: str) -> None:
        if not local.serves(caller):
            raise QKDError(f"SAE {caller} is not attached to {local.kme_id}", reason="sae_not_authorised")
        if not remote.serves(other):
            raise QKDError(f"SAE {other} is not attached to {remote.kme_id}", reason="unknown_sae")

    def status(slave_SAE_ID: str, request: Request) -> dict[str, Any]:
        master = _caller_sae_id(request)
        peer_sae(master, slave_SAE_ID)
        lim = store.limits
        return KMEStatus(
            source_KME_ID=local.kme_id,
            target_KME_ID=remote.kme_id,
            master_SAE_ID=master,
            slave_SAE_ID=slave_SAE_ID,
            key_size=lim.key_size,
            stored_key_count=store.status().stored_key_count,
            max_key_count=lim.max_key_count,
            max_key_per_request=lim.max_key_per_request,
            max_key_size=lim.max_key_size,
            min_key_size=lim.min_key_size,
            max_SAE_ID_count=0,
        ).model_dump()

    def enc_keys(slave: str, request: Request, body: _KeyRequest) -> dict[str, Any]:
        master = _caller_sae_id(request)
        peer_sae(master, slave)
        if body.additional_slave_SAE_IDs:
            raise QKDError("additional_slave_SAE_IDs is not supported (max_SAE_ID_count = 0)", reason="bad_request")
        if body.extension_mandatory:
            raise QKDError("unsupported mandatory extension", reason="unsupported_extension")
        size = store.limits.key_size if body.size is None else body.size
        return _container(store.issue(master, slave, body.number, size))

    def dec_keys(master: str, request: Request, key_ids: list[str]) -> dict[str, Any]:
        slave = _caller_sae_id(request)
        peer_sae(slave, master)
        return _container(store.release(master, slave, key_ids))

    @app.get(_API + "/{slave_SAE_ID}/status")
    async def get_status(slave_SAE_ID: str, request: Request) -> dict[str, Any]:
        return status(slave_SAE_ID, request)

    @app.get(_API + "/{slave_SAE_ID}/enc_keys")
    async def get_enc_keys(
        slave_SAE_ID: str, request: Request, number: int = Query(1), size: int | None = Query(None)
    ) -> dict[str, Any]:
        return enc_keys(slave_SAE_ID, request, _KeyRequest(number=number, size=size))

    @app.post(_API + "/{slave_SAE_ID}/enc_keys")
    async def post_enc_keys(slave_SAE_ID: str, request: Request, body: _KeyRequest) -> dict[str, Any]:
        return enc_keys(slave_SAE_ID, request, body)

    @app.get(_API + "/{master_SAE_ID}/dec_keys")
    async def get_dec_keys(master_SAE_ID: str, request: Request, key_ID: str = Query(...)) -> dict[str, Any]:
        return dec_keys(master_SAE_ID, request, [key_ID])

    @app.post(_API + "/{master_SAE_ID}/dec_keys")
    async def post_dec_keys(master_SAE_ID: str, request: Request, body: _KeyIDs) -> dict[str, Any]:
        return dec_keys(master_SAE_ID, request, [item.key_ID for item in body.key_IDs])

    return app


# ---------------------------------------------------------------------------------------------------
# Server: mutual TLS under uvicorn

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


class _MutualTLSProtocol(H11Protocol):
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


@dataclass(frozen=True)
class KMEListener:
    """Where one KME end listens and with which server certificate.

    Parameters
    ----------
    end:
        The KME's identity and attached SAEs.
    port:
        TCP port (0 picks a free one).
    cert, key:
        Server certificate and private key (PEM files).
    """

    end: KMEEnd
    port: int
    cert: PathLike
    key: PathLike


def _listen(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP (create_server leaves 0): asyncio then sets TCP_NODELAY on accepted
    # connections; without it Nagle delays each response body by the client's delayed ACK (~40 ms).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise QKDError(f"cannot listen on {host}:{port}: {exc}", reason="kme_unreachable") from None
    return sock


class KMEPairServer:
    """Both ends of a simulated KME pair in one process, each on its own HTTPS (mTLS) listener.

    Parameters
    ----------
    store:
        Key store shared by the two ends (filled by :class:`qflare.qkd.kme.BB84Link`).
    a, b:
        The two listeners.
    ca:
        CA certificate that issued the SAE client certificates.
    host:
        Address to bind (127.0.0.1 by default).

    Examples
    --------
    >>> server = KMEPairServer(store, a=..., b=..., ca="pki/ca.pem")  # doctest: +SKIP
    >>> server.start(); url_a, url_b = server.urls; ...; server.stop()  # doctest: +SKIP
    """

    def __init__(
        self, store: KeyStore, *, a: KMEListener, b: KMEListener, ca: PathLike, host: str = "127.0.0.1"
    ) -> None:
        self.store = store
        self.host = host
        self._sockets: list[socket.socket] = []
        self._servers: list[uvicorn.Server] = []
        try:
            self._configure(a, b, ca, host)
        except BaseException:
            for sock in self._sockets:
                sock.close()
            raise
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _configure(self, a: KMEListener, b: KMEListener, ca: PathLike, host: str) -> None:
        for local, remote in ((a, b), (b, a)):
            ctx = server_ssl_context(local.cert, local.key, ca)
            config = uvicorn.Config(
                create_kme_app(self.store, local.end, remote.end),
                http=_MutualTLSProtocol,
                ssl_context_factory=_fixed_context(ctx),
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
            self._servers.append(uvicorn.Server(config))
            self._sockets.append(_listen(host, local.port))

    @property
    def ports(self) -> tuple[int, int]:
        return (self._sockets[0].getsockname()[1], self._sockets[1].getsockname()[1])

    @property
    def urls(self) -> tuple[str, str]:
        """Base URLs of KME A and KME B."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"https://{host}:{self.ports[0]}", f"https://{host}:{self.ports[1]}")

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread; return once both listeners accept connections."""
        if self._thread is not None:
            return

        async def both() -> None:
            await asyncio.gather(*(srv.serve(sockets=[s]) for srv, s in zip(self._servers, self._sockets, strict=True)))

        def run() -> None:
            try:
                asyncio.run(both())
            except BaseException as exc:  # surfaced by start()/stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name="qkd-kme-pair", daemon=True)
        self._thread.start()
        done = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if all(s.started for s in self._servers) or self._error or not self._thread.is_alive():
                done.set()
                break
            done.wait(0.01)
        if not all(s.started for s in self._servers):
            self.stop()
            raise QKDError(f"KME pair failed to start: {self._error!r}", reason="kme_unreachable")

    def stop(self) -> None:
        for srv in self._servers:
            srv.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> KMEPairServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------
# Client

_KNOWN_REASONS = frozenset(
    {
        "bad_request",
        "key_id_reused",
        "key_number",
        "key_size",
        "out_of_key",
        "sae_not_authorised",
        "unauthenticated",
        "unknown_key_id",
        "unknown_sae",
        "unsupported_extension",
    }
)
_REASON_OF_STATUS = {400: "kme_bad_request", 401: "kme_unauthorized", 503: "kme_unavailable"}
_Model = TypeVar("_Model", bound=BaseModel)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _is_tls_failure(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLError) for e in _chain(exc))


class KMEClient:
    """ETSI GS QKD 014 client for an SAE: HTTPS with its client certificate and a pinned CA.

    Only ``ca`` is trusted for the KME's certificate (no system trust store), and the KME's
    hostname is checked against its certificate. Every failure raises :class:`QKDError`:
    ``kme_unreachable`` (connection refused, timeout), ``kme_certificate`` (TLS handshake failed:
    the KME's certificate is not from the pinned CA, or the KME refused ours), ``kme_malformed``
    (a 200 response that is not a valid ETSI body), ``key_size`` (a key of the wrong length), or the
    KME's own reason (``out_of_key``, ``unknown_key_id``, ``key_id_reused``, ...).

    Parameters
    ----------
    base_url:
        KME address, e.g. ``https://127.0.0.1:8443``.
    cert, key:
        This SAE's client certificate and key (PEM); the certificate's CN is the SAE ID.
    ca:
        CA certificate the KME's server certificate must chain to.
    timeout:
        Seconds per request.
    transport:
        Custom httpx transport (tests use :class:`httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        cert: PathLike,
        key: PathLike,
        ca: PathLike,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            ctx = ssl.create_default_context(cafile=os.fspath(ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
        except (OSError, ssl.SSLError) as exc:
            raise QKDError(f"cannot load SAE TLS material: {exc}", reason="kme_certificate") from None
        self.base_url = base_url.rstrip("/")
        self._ssl = ctx
        if transport is None:
            # httpcore writes a POST's headers and body separately: without TCP_NODELAY, Nagle holds
            # the body until the KME's delayed ACK (~40 ms per request).
            transport = httpx.HTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KMEClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, model: type[_Model], body: dict[str, Any] | None = None) -> _Model:
        try:
            response = self._http.request(method, _API + path, json=body)
        except httpx.TimeoutException:
            raise QKDError(f"KME {self.base_url} timed out", reason="kme_unreachable") from None
        except httpx.TransportError as exc:
            if _is_tls_failure(exc):
                raise QKDError(f"TLS with KME {self.base_url} failed: {exc}", reason="kme_certificate") from None
            if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError) and self._refuses_our_certificate():
                raise QKDError(
                    f"KME {self.base_url} closes every connection right after the TLS handshake: "
                    "it does not accept this SAE's client certificate",
                    reason="kme_certificate",
                ) from None
            raise QKDError(f"KME {self.base_url} unreachable: {exc}", reason="kme_unreachable") from None
        if response.status_code != 200:
            raise self._error(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise QKDError(
                f"KME {self.base_url} sent a malformed {model.__name__.lstrip('_')}: {exc.error_count()} error(s)",
                reason="kme_malformed",
            ) from None

    def _refuses_our_certificate(self) -> bool:
        """Probe after a silent disconnect: does the KME drop us as soon as TLS is up?

        With TLS 1.3 the server checks the client certificate after the client has finished its
        handshake, and Python's asyncio server then closes without sending the alert; the client
        only sees a connection closed before any response. A KME that accepted the certificate
        keeps an idle connection open, waiting for a request; one that refused it closes at once.
        """
        url = httpx.URL(self.base_url)
        host, port = url.host, url.port or 443
        try:
            raw = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            return False
        try:
            with self._ssl.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(0.5)
                return tls.recv(1) == b""
        except TimeoutError:
            return False
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
        except OSError:
            return False
        finally:
            raw.close()

    def _error(self, response: httpx.Response) -> QKDError:
        reason = _REASON_OF_STATUS.get(response.status_code, "kme_error")
        message = f"KME {self.base_url} answered HTTP {response.status_code}"
        try:
            body = _ErrorBody.model_validate_json(response.content)
        except ValidationError:
            return QKDError(message, reason=reason)
        for detail in body.details:
            if detail.get("reason") in _KNOWN_REASONS:
                reason = str(detail["reason"])
                break
        return QKDError(f"{message}: {body.message[:200]}", reason=reason)

    def status(self, slave_sae_id: str) -> KMEStatus:
        """Get status (ETSI 5.1) of the link to ``slave_sae_id``."""
        return self._request("GET", f"/{slave_sae_id}/status", KMEStatus)

    def enc_keys(self, slave_sae_id: str, *, number: int = 1, size: int | None = None) -> list[QKDKey]:
        """Get key (ETSI 5.2): ``number`` new keys of ``size`` bits to share with ``slave_sae_id``."""
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        keys = self._keys(self._request("POST", f"/{slave_sae_id}/enc_keys", _KeyContainer, body), size)
        if len(keys) != number:
            raise QKDError(f"KME returned {len(keys)} keys, {number} requested", reason="kme_malformed")
        return keys

    def dec_keys(self, master_sae_id: str, key_ids: Sequence[str], *, size: int | None = None) -> list[QKDKey]:
        """Get key with key IDs (ETSI 5.3): the keys ``master_sae_id`` obtained under ``key_ids``."""
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        keys = self._keys(self._request("POST", f"/{master_sae_id}/dec_keys", _KeyContainer, body), size)
        if [k.key_id for k in keys] != list(key_ids):
            raise QKDError("KME returned other key_IDs than requested", reason="kme_malformed")
        return keys

    @staticmethod
    def _keys(container: _KeyContainer, size: int | None) -> list[QKDKey]:
        out: list[QKDKey] = []
        for item in container.keys:
            try:
                uuid.UUID(item.key_ID)
                material = base64.b64decode(item.key, validate=True)
            except (ValueError, binascii.Error):
                raise QKDError("KME returned a key_ID or key that does not parse", reason="kme_malformed") from None
            if size is not None and len(material) * 8 != size:
                raise QKDError(f"KME returned a {len(material) * 8}-bit key, {size} bits requested", reason="key_size")
            out.append(QKDKey(item.key_ID, material))
        if len({k.key_id for k in out}) != len(out):
            raise QKDError("KME returned a key_ID twice", reason="kme_malformed")
        return out


def _fixed_context(ctx: ssl.SSLContext) -> Callable[[Any, Any], ssl.SSLContext]:
    """A uvicorn ``ssl_context_factory`` that always answers with ``ctx`` (our mutual-TLS context)."""

    def factory(_config: Any, _default: Any) -> ssl.SSLContext:
        return ctx

    return factory
