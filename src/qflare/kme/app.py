"""The ETSI GS QKD 014 V1.1.1 API of one KME end, as a FastAPI app over a shared key store.

Routes (``{slave}``/``{master}`` are SAE IDs; ``size`` is in bits; keys travel base64-encoded; JSON
names exactly as in the standard)::

    GET       /api/v1/keys/{slave_SAE_ID}/status      -> Status
    GET|POST  /api/v1/keys/{slave_SAE_ID}/enc_keys    number, size -> Key container   (master SAE)
    GET|POST  /api/v1/keys/{master_SAE_ID}/dec_keys   key_ID / key_IDs -> Key container (slave SAE)

Errors are ``{"message": ..., "details": [{"reason": <QKDError reason>}]}`` with status 400 (bad
request: size, count, SAE ID, unknown or reused key_ID), 401 (SAE not authenticated or not
authorised) or 503 (the KME cannot serve: out of key).

A ``POST .../enc_keys`` without a body is the default request (every field of the key request is
optional, 6.2), exactly as ``{}``; a ``POST .../dec_keys`` without a body is ``{}`` too, which the
standard refuses (``key_IDs`` is mandatory, 6.4): 400 naming the field.

The caller's SAE ID is the subject CN of its TLS client certificate, which
:class:`qflare.kme.tls.MutualTLSProtocol` puts into the ASGI scope (``extensions["tls"]``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qflare.errors import QKDError
from qflare.qkd.keystore import KeyStore, QKDKey
from qflare.qkd.wire import API_PREFIX, KeyIDs, KeyRequest, KMEStatus

__all__ = ["KMEEnd", "create_kme_app"]


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


def _check_peer_id(role: str, peer: str, caller: str) -> None:
    """Refuse a blank, padded or non-printable peer SAE ID, and a peer equal to the caller."""
    if not peer.strip():
        raise QKDError(f"{role} is blank", reason="invalid_sae_id")
    if peer != peer.strip() or not peer.isprintable():
        raise QKDError(f"{role} {peer!r} has surrounding whitespace or control characters", reason="invalid_sae_id")
    if peer == caller:
        raise QKDError(
            f"{role} {peer!r} is the calling SAE itself: master and slave must differ", reason="invalid_sae_id"
        )


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _container(keys: Sequence[QKDKey]) -> dict[str, Any]:
    return {"keys": [{"key_ID": k.key_id, "key": _b64(k.key)} for k in keys]}


async def _json_body(request: Request) -> bytes:
    """The request's JSON text, or ``{}`` when it has no body at all."""
    raw = await request.body()
    return raw if raw.strip() else b"{}"


def _model(model: type[KeyRequest] | type[KeyIDs], data: bytes) -> Any:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise QKDError(f"bad request: body.{where}: {first.get('msg', 'invalid')}", reason="bad_request") from None


def _link_extension(store: KeyStore) -> dict[str, Any] | None:
    """``{"qflare_link": {...}}``: the BB84 link's QBER and key rate (``status_extension``, ETSI 014 6.1)."""
    stats = store.link_stats()
    return None if stats is None else {"qflare_link": stats.as_extension()}


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

    def peer_sae(role: str, caller: str, other: str) -> None:
        if not local.serves(caller):
            raise QKDError(f"SAE {caller} is not attached to {local.kme_id}", reason="sae_not_authorised")
        _check_peer_id(role, other, caller)
        if not remote.serves(other):
            raise QKDError(f"SAE {other} is not attached to {remote.kme_id}", reason="unknown_sae")

    def status(slave_SAE_ID: str, request: Request) -> dict[str, Any]:
        master = _caller_sae_id(request)
        peer_sae("slave_SAE_ID", master, slave_SAE_ID)
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
            status_extension=_link_extension(store),
        ).model_dump(exclude_none=True)

    def enc_keys(slave: str, request: Request, body: KeyRequest) -> dict[str, Any]:
        master = _caller_sae_id(request)
        peer_sae("slave_SAE_ID", master, slave)
        if body.additional_slave_SAE_IDs:
            raise QKDError("additional_slave_SAE_IDs is not supported (max_SAE_ID_count = 0)", reason="bad_request")
        if body.extension_mandatory:
            raise QKDError("unsupported mandatory extension", reason="unsupported_extension")
        size = store.limits.key_size if body.size is None else body.size
        return _container(store.issue(master, slave, body.number, size))

    def dec_keys(master: str, request: Request, key_ids: list[str]) -> dict[str, Any]:
        slave = _caller_sae_id(request)
        peer_sae("master_SAE_ID", slave, master)
        return _container(store.release(master, slave, key_ids))

    @app.get(API_PREFIX + "/{slave_SAE_ID}/status")
    async def get_status(slave_SAE_ID: str, request: Request) -> dict[str, Any]:
        return status(slave_SAE_ID, request)

    @app.get(API_PREFIX + "/{slave_SAE_ID}/enc_keys")
    async def get_enc_keys(
        slave_SAE_ID: str, request: Request, number: int = Query(1), size: int | None = Query(None)
    ) -> dict[str, Any]:
        return enc_keys(slave_SAE_ID, request, KeyRequest(number=number, size=size))

    @app.post(API_PREFIX + "/{slave_SAE_ID}/enc_keys")
    async def post_enc_keys(slave_SAE_ID: str, request: Request) -> dict[str, Any]:
        body: KeyRequest = _model(KeyRequest, await _json_body(request))
        return enc_keys(slave_SAE_ID, request, body)

    @app.get(API_PREFIX + "/{master_SAE_ID}/dec_keys")
    async def get_dec_keys(master_SAE_ID: str, request: Request, key_ID: str = Query(...)) -> dict[str, Any]:
        return dec_keys(master_SAE_ID, request, [key_ID])

    @app.post(API_PREFIX + "/{master_SAE_ID}/dec_keys")
    async def post_dec_keys(master_SAE_ID: str, request: Request) -> dict[str, Any]:
        body: KeyIDs = _model(KeyIDs, await _json_body(request))
        return dec_keys(master_SAE_ID, request, [item.key_ID for item in body.key_IDs])

    return app
