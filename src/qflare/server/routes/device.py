"""Routes that edge devices call. Every one takes a request envelope and answers with a sealed response.

Authentication is one dependency (:data:`Device`, :data:`Upload`): a route receives an authenticated
:class:`~qflare.server.gateway.DeviceCall` and only says what it does. A refusal raised by the route's
work (after the request was opened) goes back sealed under the request's response key, so the device
knows it comes from the server; refusals by the gateway, before anything could be opened, are plain
JSON, which a device treats as hints (``docs/protocol.md``, "Errors").
"""

from __future__ import annotations

import base64
import functools
import json
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from qflare.crypto.envelope import Envelope, parse_envelope
from qflare.errors import InvalidInput, QFlareError, Unauthenticated
from qflare.fl.port import PlainUpdate, SealedUpdate
from qflare.logs import bind_device
from qflare.server.deps import ModelVersion, RoundId, State, rate_limits
from qflare.server.errors import SealedRefusal, error_body
from qflare.server.gateway import RESPONSE_MEDIA_TYPE, DeviceCall, read_body_limited, request_target
from qflare.server.openapi import ENVELOPE_BODY, error_responses
from qflare.server.ratelimit import source_of
from qflare.server.schemas import Heartbeat, TaskResponse, UpdateAccepted
from qflare.server.state import ServerState

router = APIRouter(prefix="/v1/device", tags=["device"], responses=error_responses(sealed=True))

_SEALED: dict[int | str, dict[str, Any]] = {
    200: {"content": {RESPONSE_MEDIA_TYPE: {}}, "description": "sealed response (docs/protocol.md)"}
}
T = TypeVar("T")


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


async def _authenticate(request: Request, state: ServerState, *, update_round: int | None) -> DeviceCall:
    update = update_round is not None
    limit = state.config.server.max_update_bytes if update else state.config.server.max_request_bytes
    # A source whose requests keep being refused (garbage, guessing, replays) is cut off before any work,
    # and no longer adds event rows: what is recorded is bounded by the bucket (and server/retention.py).
    refusals = rate_limits(request).device_refusals
    source = source_of(request.client)
    if refusals is not None:
        refusals.check(source)
    body = b""
    try:
        body = await read_body_limited(request, limit)
        call = await run_in_threadpool(
            functools.partial(
                state.gateway.authenticate, body, method=request.method, target=request_target(request),
                round_id=update_round, now=state.clock(), max_size=limit, update=update,
            )
        )
        bind_device(call.device_id)  # for the logs (qflare.logs)
        # Per device, after authentication: nobody can spend another device's budget by claiming its id.
        per_device = rate_limits(request).device_requests
        if per_device is not None:
            per_device.take(call.device_id)  # RateLimited: 429 with Retry-After
        return call
    except QFlareError as exc:
        if refusals is not None:
            refusals.charge(source)
        device, how = _claimed(body, limit) if body else (None, "")
        bind_device(device)
        # The server's record keeps the precise cause that the caller is not told.
        reason = exc.cause if isinstance(exc, Unauthenticated) else exc.reason
        _record(state, "update_rejected" if update else "request_rejected", device, update_round, reason,
                f"{request.url.path}: {exc.message} {how}".strip())
        raise


async def authenticated_device(request: Request, state: State) -> DeviceCall:
    """A small device request, authenticated and opened."""
    return await _authenticate(request, state, update_round=None)


async def authenticated_upload(round_id: RoundId, request: Request, state: State) -> DeviceCall:
    """An update upload for ``round_id``, authenticated (its body left sealed for an enclave)."""
    return await _authenticate(request, state, update_round=round_id)


Device = Annotated[DeviceCall, Depends(authenticated_device)]
Upload = Annotated[DeviceCall, Depends(authenticated_upload)]


def _record(state: ServerState, kind: str, device: str | None, round_id: int | None, reason: str,
            detail: str, *, authenticated: bool = False) -> None:
    state.repo.add_event(kind, now=state.clock(), device_id=device, round_id=round_id, reason=reason, detail=detail)
    if kind == "update_rejected" and state.ledger is not None:
        state.ledger.update_refused(reason, device if authenticated else None, round_id)


async def _work(state: ServerState, call: DeviceCall, fn: Callable[[], T], *, kind: str = "request_rejected",
                round_id: int | None = None) -> T:
    """Run the route's work; a refusal is recorded and answered sealed to the authenticated device."""
    try:
        return await run_in_threadpool(fn)
    except QFlareError as exc:
        _record(state, kind, call.device_id, round_id, exc.reason,
                f"{call.envelope.path}: {exc.message} {_provenance(call.envelope)}".strip(), authenticated=True)
        raise SealedRefusal.for_call(exc, call.seal, error_body(exc.reason, exc.message)) from exc


def _sealed_json(call: DeviceCall, obj: Any) -> Response:
    return Response(call.seal(json.dumps(obj, separators=(",", ":")).encode()), media_type=RESPONSE_MEDIA_TYPE)


@router.post("/heartbeat", responses=_SEALED, openapi_extra=ENVELOPE_BODY, summary="Heartbeat (sealed JSON: Heartbeat)")
async def heartbeat(call: Device, state: State) -> Response:
    return _sealed_json(call, Heartbeat(device_id=call.device_id, server_time=state.clock()).model_dump())


MAX_TASK_WAIT_SECONDS = 30.0
"""The longest a task request may be held (``?wait=``): a proxy's idle timeout is usually 60 s or more."""


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0.0 <= wait <= MAX_TASK_WAIT_SECONDS:  # also NaN
        raise InvalidInput(f"wait must be a number of seconds in [0, {MAX_TASK_WAIT_SECONDS:g}]", reason="bad_wait")
    return wait


@router.post("/task", responses=_SEALED, openapi_extra={
    **ENVELOPE_BODY,
    "parameters": [{"name": "wait", "in": "query", "required": False, "schema": {
        "type": "number", "minimum": 0, "maximum": MAX_TASK_WAIT_SECONDS},
        "description": "long-poll: hold a `wait` answer up to this many seconds, until a round opens or closes"}],
}, summary="Next task (sealed JSON: TaskResponse)")
async def task(call: Device, state: State, request: Request) -> Response:
    """The device's next task. With ``?wait=S`` (part of the signed target) a ``wait`` answer is held
    until what the device is told may have changed (a round opened, closed or failed) or ``S`` seconds
    passed; the answer then says how long it was held (``waited``) so the device asks again at once."""
    orch = state.orchestrator
    started = time.monotonic()
    try:
        wait = _wait_seconds(request)
    except InvalidInput as exc:
        _record(state, "request_rejected", call.device_id, None, exc.reason, f"{call.envelope.path}: {exc.message}")
        raise SealedRefusal.for_call(exc, call.seal, error_body(exc.reason, exc.message)) from exc
    while True:
        generation = orch.changed.generation
        t = await _work(state, call, functools.partial(orch.assignment_for, call.device_id))
        left = wait - (time.monotonic() - started)
        if t.status != "wait" or left <= 0 or not await orch.changed.wait(generation, left):
            break
    held = time.monotonic() - started if wait > 0 else None
    return _sealed_json(call, TaskResponse(server_time=state.clock(), waited=held, **t.__dict__).model_dump())


@router.post("/model/{version}", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Download a global model (sealed safetensors bytes)")
async def model(version: ModelVersion, call: Device, state: State) -> Response:
    blob = await _work(state, call, functools.partial(state.orchestrator.load_model, version))
    return Response(call.seal(blob), media_type=RESPONSE_MEDIA_TYPE)


@router.post("/rounds/{round_id}/update", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Upload an update (sealed JSON: UpdateAccepted)")
async def upload_update(round_id: RoundId, call: Upload, state: State, request: Request) -> Response:
    """``?base_version=N`` (in the signed target): the model version the update was trained on (async rounds)."""
    assert isinstance(call.body, PlainUpdate | SealedUpdate)
    rec = await _work(
        state, call,
        functools.partial(state.orchestrator.submit_update, call.device_id, round_id, call.body,
                          provenance=_provenance(call.envelope),
                          base_version=request.query_params.get("base_version")),
        kind="update_rejected", round_id=round_id,
    )
    leaf = state.ledger.receipt(rec.sha256) if state.ledger is not None else None
    out = UpdateAccepted(round_id=rec.round_id, device_id=rec.device_id, sha256=rec.sha256,
                         num_examples=rec.num_examples, ledger_index=None if leaf is None else leaf[0],
                         ledger_leaf_hash=None if leaf is None else leaf[1].hex(),
                         ledger_entry=None if leaf is None else base64.b64encode(leaf[2]).decode())
    return _sealed_json(call, out.model_dump())


@router.post("/metrics", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Report the device's held-out metrics (JSON: method, metric, global, personalized, num_examples)")
async def report_metrics(call: Device, state: State) -> Response:
    """A personalising device's own held-out metric of the global and of its personalised model (server/personal.py)."""
    report = await _work(state, call, functools.partial(state.orchestrator.report_metrics, call.device_id,
                                                        call.payload))
    return _sealed_json(call, {"device_id": call.device_id, **report})
