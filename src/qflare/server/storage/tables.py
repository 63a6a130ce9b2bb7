"""ORM tables. Times are float seconds since the epoch (UTC), identical on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(64))
    key_source: Mapped[str] = mapped_column(String(16), default="mlkem")
    created_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The most training examples one update of this device may claim (declared at enrollment); None: no cap.
    max_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Round(Base):
    __tablename__ = "rounds"

    round_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | aggregated | failed
    base_version: Mapped[int] = mapped_column(Integer)
    selected: Mapped[list[str]] = mapped_column(JSON)
    opened_at: Mapped[float] = mapped_column(Float)
    deadline_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    new_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "device_id", name="uq_update_round_device"),)

    update_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.round_id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    num_examples: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    dp_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)  # local DP, as the device reports
    # Deferred: listing a round's updates must not read their bytes (1000 x 4 MB at a round's close).
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    received_at: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    spec_fingerprint: Mapped[str] = mapped_column(String(64))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # by the enclave
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class LedgerOutbox(Base):
    """Audit-ledger entries committed with the fact they record (an accepted update, a closed or failed
    round), waiting to be appended to the log (``server/ledger.py``, ``AuditLog.drain``)."""

    __tablename__ = "ledger_outbox"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Nonce(Base):
    """A request nonce seen from a device; kept until its timestamp falls out of the accepted window."""

    __tablename__ = "nonces"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class EnrollmentToken(Base):
    """A one-time, expiring token with which a device enrolls its own public key."""

    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_source: Mapped[str] = mapped_column(String(16), default="mlkem")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
