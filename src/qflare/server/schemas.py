"""Pydantic shapes at the HTTP boundary. Domain code never sees these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)


class DeviceCreated(_Out):
    device_id: str
    token: str = Field(description="the device's bearer credential; shown once, stored only as a hash")


class DevicePublic(_Out):
    device_id: str
    status: str
    key_source: str
    created_at: float
    last_seen_at: float | None
    revoked_at: float | None


class TaskResponse(_Out):
    status: Literal["train", "wait", "done"]
    retry_after: float
    server_time: float
    round_id: int | None = None
    model_version: int | None = None
    model_sha256: str | None = None
    deadline_at: float | None = None
    train_config: dict[str, Any] | None = None


class UpdateAccepted(_Out):
    round_id: int
    device_id: str
    sha256: str
    num_examples: int


class Heartbeat(_Out):
    device_id: str
    server_time: float


class RoundPublic(_Out):
    round_id: int
    status: str
    base_version: int
    new_version: int | None
    selected: list[str]
    opened_at: float
    deadline_at: float
    closed_at: float | None
    close_reason: str | None
    metrics: dict[str, Any] | None


class ModelPublic(_Out):
    version: int
    sha256: str
    spec_fingerprint: str
    round_id: int | None
    created_at: float


class EventPublic(_Out):
    event_id: int
    ts: float
    kind: str
    device_id: str | None
    round_id: int | None
    reason: str | None
    detail: str | None


class StatusResponse(_Out):
    task: str
    metric: str
    rounds_total: int
    rounds_completed: int
    rounds_failed: int
    finished: bool
    current_round: RoundPublic | None
    current_round_updates: int
    latest_metrics: dict[str, Any] | None
    latest_model_version: int | None
    accepted_updates: int
    rejected_updates: int
    rejected_requests: int
    devices_registered: int
    devices_active: int


class ErrorDetail(BaseModel):
    reason: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
