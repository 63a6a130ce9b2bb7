"""Unauthenticated routes: the server's public keys and device self-enrollment with a one-time token."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Query, Request

from qflare.crypto.keyfile import fingerprint, serialize_public_key
from qflare.errors import NotFound, QFlareError
from qflare.server.deps import State, rate_limits
from qflare.server.enrollment import enroll_with_token
from qflare.server.openapi import error_responses
from qflare.server.ratelimit import source_of
from qflare.server.schemas import AttestationPublic, DevicePublic, SelfEnroll, ServerKeysPublic

router = APIRouter(prefix="/v1", tags=["public"], responses=error_responses())


@router.get("/server/keys", response_model=ServerKeysPublic)
def server_keys(state: State) -> ServerKeysPublic:
    """The server KEM public key devices encapsulate to (pin its fingerprint in device_config.yaml)."""
    pub = state.gateway.opener.kem_public_key()
    return ServerKeysPublic(
        kem_public_key=serialize_public_key(pub).decode(),
        kem_fingerprint=fingerprint(pub),
        timestamp_window_seconds=state.config.server.timestamp_window_seconds,
    )


@router.get("/enclave/attestation", response_model=AttestationPublic)
# Whole bytes only: an odd number of hex digits passed the old pattern and failed in bytes.fromhex (500).
def attestation(state: State, nonce: str = Query(pattern=r"^(?:[0-9a-f]{2}){16,64}$")) -> AttestationPublic:
    """A fresh quote from the enclave for the device's nonce, with the keys it binds."""
    enclave = state.enclave
    if enclave is None:
        raise NotFound("this server runs without an enclave", reason="no_enclave")
    ident = enclave.identity()
    quote = enclave.quote(bytes.fromhex(nonce))
    if state.ledger is not None:  # logged once per enclave identity (a restart with new keys logs again)
        state.ledger.enclave_quote_published(ident.measurement, quote, ident.public_keys.encode())
    return AttestationPublic(
        quote=base64.b64encode(quote).decode(),
        public_keys=base64.b64encode(ident.public_keys.encode()).decode(),
        measurement=ident.measurement.hex(),
        signer=ident.signer.hex(),
        simulated=ident.simulated,
    )


@router.post("/enroll", response_model=DevicePublic, status_code=201)
def self_enroll(body: SelfEnroll, state: State, request: Request) -> DevicePublic:
    """A device enrolls its own public key with a one-time token (and proves it holds the private key)."""
    limiter = rate_limits(request).enrollment
    if limiter is not None:
        limiter.take(source_of(request.client))  # token guessing: a budget of attempts per source
    try:
        rec = enroll_with_token(state.repo, body.device_id, body.public_key, body.token, body.signature,
                                now=state.clock())
    except QFlareError as exc:
        state.repo.add_event("request_rejected", now=state.clock(), device_id=body.device_id, reason=exc.reason,
                             detail=f"/v1/enroll: {exc.message}")
        raise
    if state.ledger is not None:
        state.ledger.device_enrolled(rec.device_id, rec.public_key)
    return DevicePublic.model_validate(rec)
