"""Operator routes: device registry and run status. Bearer operator token required."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from qflare.errors import Conflict, NotFound
from qflare.server import services
from qflare.server.deps import ModelVersion, Operator, RoundId, State
from qflare.server.enrollment import enroll_by_operator
from qflare.server.openapi import error_responses
from qflare.server.schemas import (
    DeviceEnroll,
    DevicePublic,
    EventPublic,
    ModelPublic,
    RoundDetailPublic,
    RoundPublic,
    StatusResponse,
    TokenCreate,
    TokenCreated,
)
from qflare.server.state import ServerState

router = APIRouter(prefix="/v1/admin", tags=["operator"], responses=error_responses())


@router.post("/devices", response_model=DevicePublic, status_code=201)
def enroll_device(body: DeviceEnroll, state: State, _: Operator) -> DevicePublic:
    """Enroll a device's public identity key (operator enrollment)."""
    rec = enroll_by_operator(state.repo, body.device_id, body.public_key, body.key_source, now=state.clock(),
                             max_examples=body.max_examples)
    if state.ledger is not None:
        state.ledger.device_enrolled(rec.device_id, rec.public_key)
    return DevicePublic.model_validate(rec)


@router.post("/enrollment-tokens", response_model=TokenCreated, status_code=201)
def create_enrollment_token(body: TokenCreate, state: State, _: Operator) -> TokenCreated:
    """Issue a one-time, expiring token with which a device enrolls its own key."""
    issued = services.issue_enrollment_token(state, device_id=body.device_id, key_source=body.key_source,
                                             ttl_seconds=body.ttl_seconds)
    return TokenCreated.model_validate(issued)


@router.get("/devices", response_model=list[DevicePublic])
def list_devices(state: State, _: Operator) -> list[DevicePublic]:
    reputation = state.orchestrator.reputation
    return [
        DevicePublic.model_validate(d).model_copy(
            update={"quarantine_reason": reputation.reason(d.device_id) if d.status == "quarantined" else None}
        )
        for d in state.repo.list_devices()
    ]


@router.post("/devices/{device_id}/restore", response_model=DevicePublic)
def restore_device(device_id: str, state: State, _: Operator) -> DevicePublic:
    """Make a quarantined device selectable again (its earlier strikes are forgiven)."""
    rec = state.orchestrator.reputation.restore(device_id)
    if rec is None:
        current = state.repo.get_device(device_id)
        if current is None:
            raise NotFound(f"device {device_id!r} is not registered", reason="unknown_device")
        raise Conflict(f"device {device_id!r} is {current.status}, not quarantined", reason="not_quarantined")
    return DevicePublic.model_validate(rec)


@router.post("/devices/{device_id}/revoke", response_model=DevicePublic)
def revoke_device(device_id: str, state: State, _: Operator) -> DevicePublic:
    return DevicePublic.model_validate(services.revoke_device(state, device_id))


@router.get("/rounds", response_model=list[RoundPublic])
def list_rounds(state: State, _: Operator) -> list[RoundPublic]:
    return [RoundPublic.model_validate(r) for r in state.repo.list_rounds()]


@router.get("/rounds/{round_id}", response_model=RoundDetailPublic)
def show_round(round_id: RoundId, state: State, _: Operator) -> RoundDetailPublic:
    """One round with the updates it accepted."""
    return RoundDetailPublic.model_validate(services.round_detail(state, round_id))


@router.get("/models/{version}/safetensors", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def export_model(version: ModelVersion, state: State, _: Operator) -> Response:
    """A global model's safetensors bytes; ``X-QFLARE-SHA256`` is their hash as stored at aggregation."""
    m = services.model_bytes(state, version)
    return Response(m.blob, media_type="application/octet-stream",
                    headers={"X-QFLARE-SHA256": m.record.sha256, "X-QFLARE-Model-Version": str(version)})


@router.get("/models", response_model=list[ModelPublic])
def list_models(state: State, _: Operator) -> list[ModelPublic]:
    return [ModelPublic.model_validate(m) for m in state.repo.list_models()]


@router.get("/events", response_model=list[EventPublic])
def list_events(state: State, _: Operator, kind: str | None = None,
                limit: int = Query(1000, ge=1, le=10000)) -> list[EventPublic]:
    return [EventPublic.model_validate(e) for e in state.repo.list_events(kind=kind, limit=limit)]


def _status(state: ServerState) -> StatusResponse:
    return StatusResponse.model_validate(services.status(state))


@router.get("/status", response_model=StatusResponse)
async def status(state: State, _: Operator) -> StatusResponse:
    return await run_in_threadpool(_status, state)


@router.get("/personalization")
def personalization(state: State, _: Operator) -> dict[str, Any]:
    """The devices' reported held-out metrics (personalised FL): per device, mean and worst decile."""
    from qflare.server.personal import personalization_summary

    return {"metric": state.orchestrator.metric, **personalization_summary(state.repo, state.orchestrator.metric)}
