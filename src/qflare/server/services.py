"""What the operator routes do, without HTTP: run status, a round with its updates, a model's bytes.

The admin routes (``server/routes/admin.py``) stay thin: parse, call one function here, shape the answer.
Everything returns plain frozen records (the routes map them to ``server/schemas.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qflare.errors import NotFound
from qflare.server.checks import Check, QkdLinkView, check_checkpoint, check_enclave_quote, qkd_link
from qflare.server.state import ServerState
from qflare.server.storage.repo import DeviceRecord, ModelRecord, RoundRecord, UpdateRecord

__all__ = [
    "DashboardView", "DeviceRow", "EnclaveView", "IssuedToken", "ModelBytes", "RoundDetail", "Status",
    "dashboard_view", "issue_enrollment_token", "model_bytes", "revoke_device", "round_detail", "status",
]


@dataclass(frozen=True)
class Status:
    """The run at a glance (``GET /v1/admin/status``, ``qflare status``)."""

    task: str
    metric: str
    rounds_total: int
    rounds_completed: int
    rounds_failed: int
    finished: bool
    current_round: RoundRecord | None
    current_round_updates: int
    latest_metrics: dict[str, Any] | None
    latest_model_version: int | None
    accepted_updates: int
    rejected_updates: int
    rejected_requests: int
    devices_registered: int
    devices_active: int


def status(state: ServerState) -> Status:
    """One moment of the run: the rounds are read once, and ``rounds_completed``, ``rounds_failed``,
    ``finished`` and the current round all come from that read (a round closing on another thread or worker
    between separate reads had made a finished run report its last round uncounted), under the
    orchestrator's lock, so that a close in this process cannot spend the DP budget between that read and
    ``finished`` either. Counts read after it (updates, devices) can only be as new or newer."""
    repo, orch, cfg = state.repo, state.orchestrator, state.config
    now = state.clock()
    with orch.consistent_view():  # a close here would spend DP budget between the rounds read and `finished`
        rounds = repo.list_rounds()
        done = [r for r in rounds if r.status == "aggregated"]
        finished = orch.finished(completed=len(done))
    current = next((r for r in rounds if r.status == "open"), None)
    latest = repo.latest_model()
    return Status(
        task=cfg.task,
        metric=orch.metric,
        rounds_total=cfg.rounds.total,
        rounds_completed=len(done),
        rounds_failed=sum(r.status == "failed" for r in rounds),
        finished=finished,
        current_round=current,
        current_round_updates=repo.count_updates(current.round_id) if current else 0,
        latest_metrics=done[-1].metrics if done else None,
        latest_model_version=latest.version if latest else None,
        accepted_updates=repo.count_updates(),
        rejected_updates=repo.count_events("update_rejected"),
        rejected_requests=repo.count_events("request_rejected"),
        devices_registered=repo.count_devices(),  # a count: the status is polled (4/s by qflare simulate)
        devices_active=repo.count_active_devices(since=now - cfg.rounds.active_window_seconds),
    )


@dataclass(frozen=True)
class RoundDetail:
    """One round with the updates it accepted (``qflare rounds show``)."""

    round: RoundRecord
    updates: tuple[UpdateRecord, ...]


def round_detail(state: ServerState, round_id: int) -> RoundDetail:
    rnd = state.repo.get_round(round_id)
    if rnd is None:
        raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
    return RoundDetail(rnd, tuple(state.repo.round_updates(round_id)))


@dataclass(frozen=True)
class ModelBytes:
    """A stored global model: its record and its safetensors bytes (``qflare model export``)."""

    record: ModelRecord
    blob: bytes


@dataclass(frozen=True)
class IssuedToken:
    """A one-time enrollment token, shown once (only its hash is stored)."""

    token: str
    device_id: str | None
    expires_at: float


def issue_enrollment_token(state: ServerState, *, device_id: str | None, key_source: str,
                           ttl_seconds: float | None) -> IssuedToken:
    """Store a token's hash with its expiry and the ``enrollment_token_issued`` event, in one transaction."""
    from qflare.server.enrollment import new_token, token_hash
    from qflare.server.storage import NewEvent

    now = state.clock()
    token = new_token()
    expires_at = now + (ttl_seconds or state.config.server.enrollment_token_ttl_seconds)
    state.repo.add_enrollment_token(token_hash(token), device_id=device_id, key_source=key_source, now=now,
                                    expires_at=expires_at,
                                    event=NewEvent("enrollment_token_issued", device_id=device_id))
    return IssuedToken(token, device_id, expires_at)


def revoke_device(state: ServerState, device_id: str) -> DeviceRecord:
    """Revoke with its ``device_revoked`` event in one transaction, then record it in the audit ledger."""
    from qflare.server.storage import NewEvent

    rec = state.repo.revoke_device(device_id, now=state.clock(), event=NewEvent("device_revoked", device_id=device_id))
    if state.ledger is not None:
        state.ledger.device_revoked(device_id)
    return rec


def model_bytes(state: ServerState, version: int) -> ModelBytes:
    rec = state.repo.get_model(version)
    if rec is None:
        raise NotFound(f"model version {version} does not exist", reason="unknown_model_version")
    return ModelBytes(rec, state.repo.model_blob(version))


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    status: str
    key_source: str
    last_seen_at: float | None
    accepted: int
    refused: int
    quarantine_reason: str | None = None  # why reputation quarantined it (status "quarantined")


@dataclass(frozen=True)
class EnclaveView:
    backend: str
    quote: Check
    measurement: str | None = None
    signer: str | None = None
    simulated: bool | None = None


@dataclass(frozen=True)
class DashboardView:
    """Everything ``/dashboard`` shows, read (and verified: :mod:`qflare.server.checks`) in one go."""

    status: Status
    rounds: tuple[RoundRecord, ...]
    devices: tuple[DeviceRow, ...]
    refusals_by_reason: tuple[tuple[str, str, int], ...]  # (kind, reason, count), most frequent first
    refusal_times: tuple[tuple[float, str | None], ...]
    enclave: EnclaveView
    ledger_size: int | None
    ledger_checkpoint: str | None
    checkpoint_check: Check
    qkd: QkdLinkView | None


def _enclave_view(state: ServerState) -> EnclaveView:
    quote = check_enclave_quote(state)
    if state.enclave is None:
        return EnclaveView(backend=state.config.enclave.backend, quote=quote)
    try:
        ident = state.enclave.identity()
    except Exception:  # noqa: BLE001 - the quote check already says why the enclave does not answer
        return EnclaveView(backend=state.config.enclave.backend, quote=quote)
    return EnclaveView(backend=state.config.enclave.backend, quote=quote, measurement=ident.measurement.hex(),
                       signer=ident.signer.hex(), simulated=ident.simulated)


def dashboard_view(state: ServerState) -> DashboardView:
    repo = state.repo
    counts = repo.per_device_counts()
    reputation = state.orchestrator.reputation
    devices = tuple(
        DeviceRow(d.device_id, d.status, d.key_source, d.last_seen_at, *counts.get(d.device_id, (0, 0)),
                  quarantine_reason=reputation.reason(d.device_id) if d.status == "quarantined" else None)
        for d in repo.list_devices()
    )
    by_reason = sorted(((k, r or "unknown", n) for (k, r), n in
                        repo.count_events_by_reason(("request_rejected", "update_rejected")).items()),
                       key=lambda t: (-t[2], t[0], t[1]))
    ledger_size = checkpoint = None
    if state.ledger is not None:
        ledger_size = state.ledger.log.size()
        note = state.ledger.log.latest_checkpoint()
        checkpoint = note.decode(errors="replace") if note else None
    return DashboardView(
        status=status(state), rounds=tuple(repo.list_rounds()), devices=devices,
        refusals_by_reason=tuple(by_reason), refusal_times=tuple(repo.refusal_times()),
        enclave=_enclave_view(state), ledger_size=ledger_size, ledger_checkpoint=checkpoint,
        checkpoint_check=check_checkpoint(state), qkd=qkd_link(state),
    )
