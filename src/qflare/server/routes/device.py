"""Routes that edge devices call. Every one takes a request envelope and answers with a sealed response."""

from __future__ import annotations

import functools
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from qflare.crypto.envelope import Envelope, parse_envelope
from qflare.errors import QFlareError
from qflare.server.deps import State
from qflare.server.gateway import RESPONSE_MEDIA_TYPE, DeviceCall, read_body_limited
from qflare.server.schemas import Heartbeat, TaskResponse, UpdateAccepted
from qflare.server.state import ServerState

router = APIRouter(prefix="/v1/device", tags=["device"])

_SEALED: dict[int | str, dict[str, Any]] = {
    200: {"content": {RESPONSE_MEDIA_TYPE: {}}, "description": "sealed response (docs/protocol.md)"}
}


def _claimed(body: bytes, limit: int) -> tuple[str | None, str]:
    """The device id and key source a refused request claims, for the event record (trusted for nothing else)."""
    try:
        env = parse_envelope(body, max_size=limit)
    except QFlareError:
        return None, ""
    return env.device_id, _provenance(env)


def _provenance(env: Envelope) -> str:
    """How the request was keyed, for the event record: key source and QKD key ids."""
    ids = f" key_ids={','.join(env.key_ids)}" if env.key_ids else ""
    return f"key_source={env.key_source.value}{ids}"


async def _authenticate(request: Request, state: ServerState, *, update_round: int | None = None) -> DeviceCall:
    """Authenticate a device request; ``update_round`` marks an update upload (its size limit, its
    refusal record, and an enclave leaves its payload sealed)."""
    update = update_round is not None
    limit = state.config.server.max_update_bytes if update else state.config.server.max_request_bytes
    kind = "update_rejected" if update else "request_rejected"
    round_id = update_round
    body = b""
    try:
        body = await read_body_limited(request, limit)
        return await run_in_threadpool(
            functools.partial(
                state.gateway.authenticate, body, method=request.method, path=request.url.path, round_id=round_id,
                now=state.clock(), max_size=limit, update=update,
            )
        )
    except QFlareError as exc:
        device, how = _claimed(body, limit) if body else (None, "")
        _record(state, kind, device, round_id, exc, request.url.path, how)
        raise


def _record(state: ServerState, kind: str, device: str | None, round_id: int | None, exc: QFlareError,
            path: str, provenance: str = "") -> None:
    state.repo.add_event(kind, now=state.clock(), device_id=device, round_id=round_id, reason=exc.reason,
                         detail=f"{path}: {exc.message} {provenance}".strip())


def _sealed_json(call: DeviceCall, obj: Any) -> Response:
    return Response(call.seal(json.dumps(obj, separators=(",", ":")).encode()), media_type=RESPONSE_MEDIA_TYPE)


@router.post("/heartbeat", responses=_SEALED, summary="Heartbeat (sealed JSON: Heartbeat)")
async def heartbeat(request: Request, state: State) -> Response:
    call = await _authenticate(request, state)
    return _sealed_json(call, Heartbeat(device_id=call.device_id, server_time=state.clock()).model_dump())


@router.post("/task", responses=_SEALED, summary="Next task (sealed JSON: TaskResponse)")
async def task(request: Request, state: State) -> Response:
    call = await _authenticate(request, state)
    t = await run_in_threadpool(state.orchestrator.task_for, call.device_id)
    return _sealed_json(call, TaskResponse(server_time=state.clock(), **t.__dict__).model_dump())


@router.post("/model/{version}", responses=_SEALED, summary="Download a global model (sealed safetensors bytes)")
async def model(version: int, request: Request, state: State) -> Response:
    call = await _authenticate(request, state)
    try:
        blob = await run_in_threadpool(state.orchestrator.load_model, version)
    except QFlareError as exc:
        _record(state, "request_rejected", call.device_id, None, exc, request.url.path)
        raise
    return Response(call.seal(blob), media_type=RESPONSE_MEDIA_TYPE)


@router.post("/rounds/{round_id}/update", responses=_SEALED, summary="Upload an update (sealed JSON: UpdateAccepted)")
async def upload_update(round_id: int, request: Request, state: State) -> Response:
    call = await _authenticate(request, state, update_round=round_id)
    try:
        rec = await run_in_threadpool(
            functools.partial(
                state.orchestrator.submit_update, call.device_id, round_id, call.payload,
                provenance=_provenance(call.envelope), allowed_key_sources=call.key_sources,
                extra_secret=call.extra_secret,
            )
        )
    except QFlareError as exc:
        _record(state, "update_rejected", call.device_id, round_id, exc, request.url.path, _provenance(call.envelope))
        raise
    out = UpdateAccepted(round_id=rec.round_id, device_id=rec.device_id, sha256=rec.sha256,
                         num_examples=rec.num_examples)
    return _sealed_json(call, out.model_dump())
