"""Routes that edge devices call. Every one is authenticated by the device gateway."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from qflare.errors import QFlareError
from qflare.server.deps import State
from qflare.server.gateway import DeviceCall, read_body_limited
from qflare.server.schemas import Heartbeat, TaskResponse, UpdateAccepted
from qflare.server.state import ServerState

router = APIRouter(prefix="/v1/device", tags=["device"])


async def _call(
    request: Request, state: ServerState, *, limit: int, json_response: bool, round_id: int | None = None,
    kind: str = "request_rejected",
) -> DeviceCall:
    try:
        body = await read_body_limited(request, limit)
        return await run_in_threadpool(
            state.gateway.authenticate, request, body, now=state.clock(), json_response=json_response
        )
    except QFlareError as exc:
        _record(state, kind, state.gateway.claimed_device(request), round_id, exc, request.url.path)
        raise


def _record(state: ServerState, kind: str, device: str | None, round_id: int | None, exc: QFlareError,
            path: str) -> None:
    state.repo.add_event(kind, now=state.clock(), device_id=(device or "")[:64] or None, round_id=round_id,
                         reason=exc.reason, detail=f"{path}: {exc.message}")


def _json(call: DeviceCall, obj: Any) -> Response:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return Response(call.wrap_response(data), media_type=call.media_type)


@router.post("/heartbeat", response_model=Heartbeat)
async def heartbeat(request: Request, state: State) -> Response:
    call = await _call(request, state, limit=state.config.server.max_request_bytes, json_response=True)
    return _json(call, Heartbeat(device_id=call.device_id, server_time=state.clock()).model_dump())


@router.post("/task", response_model=TaskResponse)
async def task(request: Request, state: State) -> Response:
    call = await _call(request, state, limit=state.config.server.max_request_bytes, json_response=True)
    t = await run_in_threadpool(state.orchestrator.task_for, call.device_id)
    body = TaskResponse(server_time=state.clock(), **t.__dict__)
    return _json(call, body.model_dump())


@router.post(
    "/model/{version}",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "safetensors bytes"}},
)
async def model(version: int, request: Request, state: State) -> Response:
    call = await _call(request, state, limit=state.config.server.max_request_bytes, json_response=False)
    try:
        blob = await run_in_threadpool(state.orchestrator.load_model, version)
    except QFlareError as exc:
        _record(state, "request_rejected", call.device_id, None, exc, request.url.path)
        raise
    return Response(call.wrap_response(blob), media_type=call.media_type)


@router.post("/rounds/{round_id}/update", response_model=UpdateAccepted)
async def upload_update(round_id: int, request: Request, state: State) -> Response:
    call = await _call(request, state, limit=state.config.server.max_update_bytes, json_response=True,
                       round_id=round_id, kind="update_rejected")
    try:
        rec = await run_in_threadpool(state.orchestrator.submit_update, call.device_id, round_id, call.payload)
    except QFlareError as exc:
        _record(state, "update_rejected", call.device_id, round_id, exc, request.url.path)
        raise
    out = UpdateAccepted(round_id=rec.round_id, device_id=rec.device_id, sha256=rec.sha256,
                         num_examples=rec.num_examples)
    return _json(call, out.model_dump())
