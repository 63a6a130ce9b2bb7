"""Operator routes: device registry and run status. Bearer operator token required."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from qflare.server.deps import Operator, State
from qflare.server.gateway import hash_token, new_token
from qflare.server.schemas import (
    DeviceCreate,
    DeviceCreated,
    DevicePublic,
    EventPublic,
    ModelPublic,
    RoundPublic,
    StatusResponse,
)
from qflare.server.state import ServerState

router = APIRouter(prefix="/v1/admin", tags=["operator"])


@router.post("/devices", response_model=DeviceCreated, status_code=201)
def register_device(body: DeviceCreate, state: State, _: Operator) -> DeviceCreated:
    token = new_token()
    rec = state.repo.add_device(body.device_id, now=state.clock(), token_hash=hash_token(token))
    state.repo.add_event("device_registered", now=state.clock(), device_id=rec.device_id)
    return DeviceCreated(device_id=rec.device_id, token=token)


@router.get("/devices", response_model=list[DevicePublic])
def list_devices(state: State, _: Operator) -> list[DevicePublic]:
    return [DevicePublic.model_validate(d) for d in state.repo.list_devices()]


@router.post("/devices/{device_id}/revoke", response_model=DevicePublic)
def revoke_device(device_id: str, state: State, _: Operator) -> DevicePublic:
    rec = state.repo.revoke_device(device_id, now=state.clock())
    state.repo.add_event("device_revoked", now=state.clock(), device_id=device_id)
    return DevicePublic.model_validate(rec)


@router.get("/rounds", response_model=list[RoundPublic])
def list_rounds(state: State, _: Operator) -> list[RoundPublic]:
    return [RoundPublic.model_validate(r) for r in state.repo.list_rounds()]


@router.get("/models", response_model=list[ModelPublic])
def list_models(state: State, _: Operator) -> list[ModelPublic]:
    return [ModelPublic.model_validate(m) for m in state.repo.list_models()]


@router.get("/events", response_model=list[EventPublic])
def list_events(state: State, _: Operator, kind: str | None = None, limit: int = 1000) -> list[EventPublic]:
    return [EventPublic.model_validate(e) for e in state.repo.list_events(kind=kind, limit=min(limit, 10000))]


def _status(state: ServerState) -> StatusResponse:
    repo, orch, cfg = state.repo, state.orchestrator, state.config
    now = state.clock()
    current = orch.current_round()
    latest = repo.latest_model()
    devices = repo.list_devices()
    done = [r for r in repo.list_rounds() if r.status == "aggregated"]
    return StatusResponse(
        task=cfg.task,
        metric=orch.metric,
        rounds_total=cfg.rounds.total,
        rounds_completed=orch.completed_rounds(),
        rounds_failed=repo.count_rounds("failed"),
        finished=orch.finished(),
        current_round=RoundPublic.model_validate(current) if current else None,
        current_round_updates=len(repo.round_updates(current.round_id)) if current else 0,
        latest_metrics=done[-1].metrics if done else None,
        latest_model_version=latest.version if latest else None,
        accepted_updates=repo.count_updates(),
        rejected_updates=repo.count_events("update_rejected"),
        rejected_requests=repo.count_events("request_rejected"),
        devices_registered=len(devices),
        devices_active=len(repo.active_devices(since=now - cfg.rounds.active_window_seconds)),
    )


@router.get("/status", response_model=StatusResponse)
async def status(state: State, _: Operator) -> StatusResponse:
    return await run_in_threadpool(_status, state)
