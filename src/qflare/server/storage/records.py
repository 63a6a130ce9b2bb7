"""Plain frozen records the storage layer returns, and the row converters; nothing else sees a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qflare.server.storage.tables import Device, Event, ModelVersion, Round, Update


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    status: str
    key_source: str
    created_at: float
    last_seen_at: float | None
    revoked_at: float | None
    public_key: bytes = b""
    fingerprint: str = ""
    max_examples: int | None = None  # the most examples one update may claim (enrollment); None: no cap

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"


@dataclass(frozen=True)
class RoundRecord:
    round_id: int
    status: str
    base_version: int
    selected: tuple[str, ...]
    opened_at: float
    deadline_at: float
    closed_at: float | None
    close_reason: str | None
    new_version: int | None
    metrics: dict[str, Any] | None


@dataclass(frozen=True)
class UpdateRecord:
    round_id: int
    device_id: str
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    received_at: float
    dp_epsilon: float | None = None  # the local-DP epsilon the device reported with this update


@dataclass(frozen=True)
class ModelRecord:
    version: int
    sha256: str
    spec_fingerprint: str
    round_id: int | None
    created_at: float
    signature: bytes | None = None


@dataclass(frozen=True)
class EventRecord:
    event_id: int
    ts: float
    kind: str
    device_id: str | None
    round_id: int | None
    reason: str | None
    detail: str | None


def _device(row: Device) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        status=row.status,
        key_source=row.key_source,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        revoked_at=row.revoked_at,
        public_key=row.public_key,
        fingerprint=row.fingerprint,
        max_examples=row.max_examples,
    )


def _round(row: Round) -> RoundRecord:
    return RoundRecord(
        round_id=row.round_id,
        status=row.status,
        base_version=row.base_version,
        selected=tuple(row.selected),
        opened_at=row.opened_at,
        deadline_at=row.deadline_at,
        closed_at=row.closed_at,
        close_reason=row.close_reason,
        new_version=row.new_version,
        metrics=dict(row.metrics) if row.metrics is not None else None,
    )


def _update(row: Update) -> UpdateRecord:
    return UpdateRecord(
        round_id=row.round_id,
        device_id=row.device_id,
        num_examples=row.num_examples,
        train_loss=row.train_loss,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        received_at=row.received_at,
        dp_epsilon=row.dp_epsilon,
    )


def _model(row: ModelVersion) -> ModelRecord:
    return ModelRecord(
        version=row.version,
        sha256=row.sha256,
        spec_fingerprint=row.spec_fingerprint,
        round_id=row.round_id,
        created_at=row.created_at,
        signature=row.signature,
    )



@dataclass(frozen=True)
class NewEvent:
    """An event to write in the same transaction as the state change it records (see ``event=``)."""

    kind: str
    device_id: str | None = None
    round_id: int | None = None
    reason: str | None = None
    detail: str | None = None

    def row(self, now: float) -> Event:
        return Event(ts=now, kind=self.kind, device_id=self.device_id, round_id=self.round_id, reason=self.reason,
                     detail=(self.detail or "")[:2000] or None)


KEM_CIPHERTEXT_SCOPE = "*kem-ciphertext"
"""The nonce table's ``device_id`` for KEM ciphertext hashes (not a valid device id: it has ``*``)."""
