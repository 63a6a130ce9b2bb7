"""Routes that edge devices call. Every one takes a request envelope and answers with a sealed response.

Authentication is one helper (:func:`_serve`): a route hands it the work to do on the authenticated
:class:`~qflare.server.gateway.DeviceCall` and the answer to seal, and the authentication, the work and
the sealing run in one worker-thread hop. A refusal raised by the route's
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
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
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
from qflare.server.rounds import Assignment
from qflare.server.schemas import Heartbeat, TaskResponse, UpdateAccepted
from qflare.server.state import ServerState
from qflare.server.storage import UpdateRecord

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


def _record(state: ServerState, kind: str, device: str | None, round_id: int | None, reason: str,
            detail: str, *, authenticated: bool = False) -> None:
    state.repo.add_event(kind, now=state.clock(), device_id=device, round_id=round_id, reason=reason, detail=detail)
    if kind == "update_rejected" and state.ledger is not None:
        state.ledger.update_refused(reason, device if authenticated else None, round_id)


def _refused(request: Request, state: ServerState, exc: QFlareError, body: bytes, limit: int, *,
             update_round: int | None, source: str) -> str | None:
    """Record a refusal made before the request was opened (the caller then raises it, plain JSON); returns
    the device id the request claims (for the logs)."""
    refusals = rate_limits(request).device_refusals
    if refusals is not None:
        refusals.charge(source)
    device, how = _claimed(body, limit) if body else (None, "")
    bind_device(device)
    # The server's record keeps the precise cause that the caller is not told.
    reason = exc.cause if isinstance(exc, Unauthenticated) else exc.reason
    _record(state, "update_rejected" if update_round is not None else "request_rejected", device, update_round,
            reason, f"{request.url.path}: {exc.message} {how}".strip())
    return device


def _do(state: ServerState, call: DeviceCall, fn: Callable[[], T], *, kind: str = "request_rejected",
        round_id: int | None = None) -> T:
    """Run the route's work; a refusal is recorded and answered sealed to the authenticated device."""
    try:
        return fn()
    except QFlareError as exc:
        _record(state, kind, call.device_id, round_id, exc.reason,
                f"{call.envelope.path}: {exc.message} {_provenance(call.envelope)}".strip(), authenticated=True)
        raise SealedRefusal.for_call(exc, call.seal, error_body(exc.reason, exc.message)) from exc


Answer = Callable[[DeviceCall, T], bytes | None]
"""What a route answers for its work's result: the plaintext to seal, or ``None`` for no answer yet (a held task)."""


async def _serve(request: Request, state: ServerState, work: Callable[[DeviceCall], T], answer: Answer[T], *,
                 update_round: int | None = None, kind: str = "request_rejected",
                 ) -> tuple[DeviceCall, T, bytes | None]:
    """Authenticate the request, run the route's ``work`` on it and seal its answer, in ONE worker-thread hop.

    The body is read on the event loop; then one thread verifies and opens the request (the gateway),
    runs ``work`` (the orchestrator's database and enclave calls; a refusal is recorded and goes back
    sealed, :func:`_do`) and seals ``answer(call, result)``. A refusal before the request was opened is
    raised as is (plain JSON), as is a failure to seal the answer (the work's effect stands: e.g. an
    accepted update whose answer the enclave could not seal, ``docs/protocol.md`` 13.3). One hop, where
    there were two (authentication, then the work) and the answer was sealed on the event loop: the
    hand-offs were 28 % of the server's busy samples at 100 clients (``docs/benchmarks.md``).
    Returns the call, the work's result and the sealed answer (``None`` if ``answer`` gave none).
    """
    update = update_round is not None
    limit = state.config.server.max_update_bytes if update else state.config.server.max_request_bytes
    limits = rate_limits(request)
    # A source whose requests keep being refused (garbage, guessing, replays) is cut off before any work,
    # and no longer adds event rows: what is recorded is bounded by the bucket (and server/retention.py).
    source = source_of(request.client)
    if limits.device_refusals is not None:
        limits.device_refusals.check(source)
    body = b""
    try:
        body = await read_body_limited(request, limit)
    except QFlareError as exc:
        _refused(request, state, exc, body, limit, update_round=update_round, source=source)
        raise
    method, target = request.method, request_target(request)
    who: list[str | None] = [None]  # the device, for the logs on the event loop's side (the thread's context is a copy)

    def run() -> tuple[DeviceCall, T, bytes | None]:
        try:
            call = state.gateway.authenticate(body, method=method, target=target, round_id=update_round,
                                              now=state.clock(), max_size=limit, update=update)
            who[0] = call.device_id
            bind_device(call.device_id)  # for the logs of this thread (qflare.logs)
            # Per device, after authentication: nobody can spend another device's budget by claiming its id.
            if limits.device_requests is not None:
                limits.device_requests.take(call.device_id)  # RateLimited: 429 with Retry-After
        except QFlareError as exc:
            who[0] = _refused(request, state, exc, body, limit, update_round=update_round, source=source)
            raise
        result = _do(state, call, functools.partial(work, call), kind=kind, round_id=update_round)
        plain = answer(call, result)
        return call, result, None if plain is None else call.seal(plain)

    try:
        return await run_in_threadpool(run)
    finally:
        bind_device(who[0])


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _seal(call: DeviceCall, plain: bytes) -> bytes:
    return call.seal(plain)


def _answer(sealed: bytes | None) -> Response:
    assert sealed is not None
    return Response(sealed, media_type=RESPONSE_MEDIA_TYPE)


@router.post("/heartbeat", responses=_SEALED, openapi_extra=ENVELOPE_BODY, summary="Heartbeat (sealed JSON: Heartbeat)")
async def heartbeat(request: Request, state: State) -> Response:
    *_, sealed = await _serve(request, state, lambda call: state.clock(), lambda call, now: _json(
        Heartbeat(device_id=call.device_id, server_time=now).model_dump()))
    return _answer(sealed)


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
async def task(request: Request, state: State) -> Response:
    """The device's next task. With ``?wait=S`` (part of the signed target) a ``wait`` answer is held
    until what the device is told may have changed (a round opened, closed or failed) or ``S`` seconds
    passed; the answer then says how long it was held (``waited``) so the device asks again at once."""
    orch = state.orchestrator
    started = time.monotonic()

    def look(call: DeviceCall) -> tuple[int, Assignment]:
        generation = orch.changed.generation  # read before the state: a change meanwhile is not missed
        return generation, orch.assignment_for(call.device_id)

    def hold(wait: float, t: Assignment) -> bool:
        return t.status == "wait" and wait > 0 and time.monotonic() - started < wait

    def reply(wait: float, t: Assignment) -> bytes:
        held = time.monotonic() - started if wait > 0 else None
        return _json(TaskResponse(server_time=state.clock(), waited=held, **t.__dict__).model_dump())

    def first(call: DeviceCall) -> tuple[float, int, Assignment]:
        wait = _wait_seconds(request)  # InvalidInput bad_wait: a sealed refusal (recorded)
        return (wait, *look(call))

    call, (wait, generation, t), sealed = await _serve(
        request, state, first, lambda _, r: None if hold(r[0], r[2]) else reply(r[0], r[2]))
    while sealed is None:
        left = wait - (time.monotonic() - started)
        if left > 0 and await orch.changed.wait(generation, left):

            def again() -> tuple[int, Assignment, bytes | None]:
                g, a = _do(state, call, functools.partial(look, call))
                return g, a, None if hold(wait, a) else call.seal(reply(wait, a))

            generation, t, sealed = await run_in_threadpool(again)
        else:  # the wait ran out (or the server is stopping): answer what the device was last told
            sealed = await run_in_threadpool(functools.partial(_seal, call, reply(wait, t)))
    return _answer(sealed)


@router.post("/model/{version}", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Download a global model (sealed safetensors bytes)")
async def model(version: ModelVersion, request: Request, state: State) -> Response:
    *_, sealed = await _serve(request, state, lambda call: state.orchestrator.load_model(version),
                              lambda _, blob: blob)
    return _answer(sealed)


@router.post("/rounds/{round_id}/update", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Upload an update (sealed JSON: UpdateAccepted)")
async def upload_update(round_id: RoundId, request: Request, state: State) -> Response:
    """``?base_version=N`` (in the signed target): the model version the update was trained on (async rounds)."""
    base_version = request.query_params.get("base_version")

    def submit(call: DeviceCall) -> UpdateRecord:
        assert isinstance(call.body, PlainUpdate | SealedUpdate)
        return state.orchestrator.submit_update(call.device_id, round_id, call.body,
                                                provenance=_provenance(call.envelope), base_version=base_version,
                                                device=call.device)

    def receipt(call: DeviceCall, rec: UpdateRecord) -> bytes:
        leaf = state.ledger.receipt(rec.sha256) if state.ledger is not None else None
        out = UpdateAccepted(round_id=rec.round_id, device_id=rec.device_id, sha256=rec.sha256,
                             num_examples=rec.num_examples, ledger_index=None if leaf is None else leaf[0],
                             ledger_leaf_hash=None if leaf is None else leaf[1].hex(),
                             ledger_entry=None if leaf is None else base64.b64encode(leaf[2]).decode())
        return _json(out.model_dump())

    *_, sealed = await _serve(request, state, submit, receipt, update_round=round_id, kind="update_rejected")
    return _answer(sealed)


@router.post("/metrics", responses=_SEALED, openapi_extra=ENVELOPE_BODY,
             summary="Report the device's held-out metrics (JSON: method, metric, global, personalized, num_examples)")
async def report_metrics(request: Request, state: State) -> Response:
    """A personalising device's own held-out metric of the global and of its personalised model (server/personal.py)."""
    *_, sealed = await _serve(request, state,
                              lambda call: state.orchestrator.report_metrics(call.device_id, call.payload),
                              lambda call, report: _json({"device_id": call.device_id, **report}))
    return _answer(sealed)
