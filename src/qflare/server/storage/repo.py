"""The storage layer: one :class:`Repository` over SQLAlchemy, returning plain frozen records.

Nothing outside this package sees a SQLAlchemy object. Every method is one transaction, so a crash
between two calls leaves the database in a state the orchestrator can resume from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from qflare.errors import AuthenticationError, ConfigError, Conflict, DuplicateUpdate, NotFound, ReplayDetected
from qflare.server.storage.tables import Base, Device, EnrollmentToken, Event, ModelVersion, Nonce, Round, Update


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers go on while a writer commits. synchronous=NORMAL under WAL keeps every committed
    # transaction across a crash of the server process (tests/test_e2e.py SIGKILLs it); a power cut or
    # OS crash can lose the last transactions before a checkpoint. FULL would close that window at about
    # twice the commit cost (docs/benchmarks.md); tests/server/test_storage.py pins the setting.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine for a SQLite file or a PostgreSQL URL (``postgresql+psycopg://...``).

    A URL that names no known database raises :class:`ConfigError` (never echoing its password).
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        elif url.startswith("postgresql+psycopg://"):
            # A host that drops packets must not hang start-up for minutes.
            engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError):
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        raise ConfigError(f"database URL: unknown scheme {scheme!r}; use sqlite:///file.db or "
                          "postgresql://user@host/db", reason="bad_database_url") from None
    return engine


def where(engine: Engine) -> str:
    """The database as an operator may see it in a message: host, port and name, never the password."""
    u = engine.url
    if u.get_backend_name() == "sqlite":
        return f"sqlite file {u.database or ':memory:'}"
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


def _first_line(exc: BaseException, secret: str | None) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.replace(secret, "***") if secret else line


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


class Repository:
    """All persistent state of a QFLARE server.

    Parameters
    ----------
    url:
        SQLAlchemy database URL. ``sqlite:///path.db`` by default; ``postgresql://...`` also works.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            Base.metadata.create_all(self.engine)
        except (OperationalError, InterfaceError) as exc:
            self.engine.dispose()
            raise ConfigError(f"cannot reach the database at {where(self.engine)}: "
                              f"{_first_line(exc, self.engine.url.password)}", reason="database_unreachable") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- devices ---------------------------------------------------------------------------------
    def add_device(
        self,
        device_id: str,
        *,
        now: float,
        public_key: bytes,
        fingerprint: str,
        key_source: str = "mlkem",
        event: NewEvent | None = None,
    ) -> DeviceRecord:
        try:
            with self._tx() as s:
                row = Device(
                    device_id=device_id,
                    status="active",
                    public_key=public_key,
                    fingerprint=fingerprint,
                    key_source=key_source,
                    created_at=now,
                )
                s.add(row)
                if event is not None:
                    s.add(event.row(now))
                s.flush()
                return _device(row)
        except IntegrityError:
            raise Conflict(f"device {device_id!r} is already registered", reason="device_exists") from None

    def get_device(self, device_id: str) -> DeviceRecord | None:
        # Core, not ORM: this runs on every device request.
        with self.engine.connect() as c:
            row = c.execute(select(Device.__table__).where(Device.device_id == device_id)).first()
        if row is None:
            return None
        m = row._mapping
        return DeviceRecord(
            device_id=m["device_id"], status=m["status"], key_source=m["key_source"], created_at=m["created_at"],
            last_seen_at=m["last_seen_at"], revoked_at=m["revoked_at"], public_key=bytes(m["public_key"]),
            fingerprint=m["fingerprint"],
        )

    def list_devices(self) -> list[DeviceRecord]:
        with self._tx() as s:
            return [_device(r) for r in s.scalars(select(Device).order_by(Device.device_id))]

    def set_device_status(self, device_id: str, status: str, *, expect: str) -> DeviceRecord | None:
        """Move a device from ``expect`` to ``status`` (quarantine, restore); ``None`` if it was not ``expect``."""
        with self._tx() as s:
            row = s.get(Device, device_id)
            if row is None:
                raise NotFound(f"device {device_id!r} is not registered", reason="unknown_device")
            if row.status != expect:
                return None
            row.status = status
            return _device(row)

    def revoke_device(self, device_id: str, *, now: float, event: NewEvent | None = None) -> DeviceRecord:
        with self._tx() as s:
            row = s.get(Device, device_id)
            if row is None:
                raise NotFound(f"device {device_id!r} is not registered", reason="unknown_device")
            if row.status != "revoked":
                row.status = "revoked"
                row.revoked_at = now
                if event is not None:
                    s.add(event.row(now))
            return _device(row)

    def touch_device(self, device_id: str, *, now: float, min_interval: float = 0.0) -> None:
        """Record that the device was seen; skips the write if it was seen less than ``min_interval`` ago."""
        with self._tx() as s:
            q = update(Device).where(Device.device_id == device_id)
            if min_interval > 0:
                q = q.where((Device.last_seen_at.is_(None)) | (Device.last_seen_at < now - min_interval))
            s.execute(q.values(last_seen_at=now))

    # -- nonces ----------------------------------------------------------------------------------
    def nonce_seen(self, device_id: str, nonce: str) -> bool:
        with self.engine.connect() as c:
            q = select(Nonce.expires_at).where(Nonce.device_id == device_id, Nonce.nonce == nonce)
            return c.execute(q).first() is not None

    def record_nonce(self, device_id: str, nonce: str, *, expires_at: float) -> None:
        """Insert the nonce; the primary key makes a concurrent second use fail atomically (ReplayDetected)."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(Nonce).values(device_id=device_id, nonce=nonce, expires_at=expires_at))
        except IntegrityError:
            raise ReplayDetected("this request was seen before") from None

    def record_request(self, device_id: str, nonce: str, kem_ciphertext_id: str | None, *, expires_at: float) -> None:
        """Record a request's nonce and its KEM ciphertext's hash in one transaction: both or neither.

        Raises ``ReplayDetected``: ``replay`` for a nonce this device used before,
        ``kem_ciphertext_reused`` for a KEM ciphertext seen before (from any device) within the window.
        """
        try:
            with self.engine.begin() as c:
                c.execute(insert(Nonce).values(device_id=device_id, nonce=nonce, expires_at=expires_at))
                if kem_ciphertext_id is not None:
                    try:
                        c.execute(insert(Nonce).values(device_id=KEM_CIPHERTEXT_SCOPE, nonce=kem_ciphertext_id,
                                                       expires_at=expires_at))
                    except IntegrityError:
                        raise ReplayDetected("this KEM ciphertext was used before: one request, one key",
                                             reason="kem_ciphertext_reused") from None
        except IntegrityError:
            raise ReplayDetected("this request was seen before") from None

    def purge_nonces(self, *, now: float) -> int:
        with self._tx() as s:
            result = s.execute(delete(Nonce).where(Nonce.expires_at < now))
            return int(getattr(result, "rowcount", 0) or 0)

    def count_nonces(self) -> int:
        with self._tx() as s:
            q = select(func.count()).select_from(Nonce).where(Nonce.device_id != KEM_CIPHERTEXT_SCOPE)
            return int(s.scalar(q) or 0)

    # -- enrollment tokens -----------------------------------------------------------------------
    def add_enrollment_token(
        self, token_hash: str, *, device_id: str | None, key_source: str, now: float, expires_at: float,
        event: NewEvent | None = None,
    ) -> None:
        with self._tx() as s:
            s.add(EnrollmentToken(token_hash=token_hash, device_id=device_id, key_source=key_source,
                                  created_at=now, expires_at=expires_at))
            if event is not None:
                s.add(event.row(now))

    def enroll_with_token(
        self, token_hash: str, device_id: str, *, public_key: bytes, fingerprint: str, now: float,
        event: NewEvent | None = None,
    ) -> DeviceRecord:
        """Consume a one-time token and register the device in one transaction."""
        try:
            with self._tx() as s:
                tok = s.get(EnrollmentToken, token_hash, with_for_update=True)
                if tok is None:
                    raise AuthenticationError("unknown enrollment token", reason="bad_enrollment_token")
                if tok.used_at is not None:
                    raise AuthenticationError("enrollment token already used", reason="enrollment_token_used")
                if now > tok.expires_at:
                    raise AuthenticationError("enrollment token expired", reason="enrollment_token_expired")
                if tok.device_id is not None and tok.device_id != device_id:
                    raise AuthenticationError("enrollment token is for another device",
                                              reason="bad_enrollment_token")
                tok.used_at, tok.used_by = now, device_id
                row = Device(device_id=device_id, status="active", public_key=public_key, fingerprint=fingerprint,
                             key_source=tok.key_source, created_at=now)
                s.add(row)
                if event is not None:
                    s.add(event.row(now))
                s.flush()
                return _device(row)
        except IntegrityError:
            raise Conflict(f"device {device_id!r} is already registered", reason="device_exists") from None

    def active_devices(self, *, since: float) -> list[str]:
        with self._tx() as s:
            q = (
                select(Device.device_id)
                .where(Device.status == "active", Device.last_seen_at >= since)
                .order_by(Device.device_id)
            )
            return list(s.scalars(q))

    # -- model versions --------------------------------------------------------------------------
    def add_model(
        self, version: int, *, blob: bytes, sha256: str, spec_fingerprint: str, round_id: int | None, now: float
    ) -> ModelRecord:
        with self._tx() as s:
            row = ModelVersion(
                version=version,
                sha256=sha256,
                spec_fingerprint=spec_fingerprint,
                blob=blob,
                round_id=round_id,
                created_at=now,
            )
            s.add(row)
            s.flush()
            return _model(row)

    def latest_model(self) -> ModelRecord | None:
        with self._tx() as s:
            row = s.scalars(select(ModelVersion).order_by(ModelVersion.version.desc()).limit(1)).first()
            return _model(row) if row is not None else None

    def get_model(self, version: int) -> ModelRecord | None:
        with self._tx() as s:
            row = s.get(ModelVersion, version)
            return _model(row) if row is not None else None

    def model_blob(self, version: int) -> bytes:
        with self._tx() as s:
            blob = s.scalar(select(ModelVersion.blob).where(ModelVersion.version == version))
            if blob is None:
                raise NotFound(f"model version {version} does not exist", reason="unknown_model_version")
            return bytes(blob)

    def list_models(self) -> list[ModelRecord]:
        with self._tx() as s:
            return [_model(r) for r in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]

    # -- rounds ----------------------------------------------------------------------------------
    def open_round(
        self, round_id: int, *, base_version: int, selected: Sequence[str], now: float, deadline_at: float,
        event: NewEvent | None = None,
    ) -> RoundRecord:
        with self._tx() as s:
            row = Round(
                round_id=round_id,
                status="open",
                base_version=base_version,
                selected=list(selected),
                opened_at=now,
                deadline_at=deadline_at,
            )
            s.add(row)
            if event is not None:
                s.add(event.row(now))
            s.flush()
            return _round(row)

    def get_round(self, round_id: int) -> RoundRecord | None:
        with self._tx() as s:
            row = s.get(Round, round_id)
            return _round(row) if row is not None else None

    def open_rounds(self) -> list[RoundRecord]:
        with self._tx() as s:
            return [_round(r) for r in s.scalars(select(Round).where(Round.status == "open"))]

    def list_rounds(self) -> list[RoundRecord]:
        with self._tx() as s:
            return [_round(r) for r in s.scalars(select(Round).order_by(Round.round_id))]

    def last_round_id(self) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.coalesce(func.max(Round.round_id), 0))) or 0)

    def count_rounds(self, status: str) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(Round).where(Round.status == status)) or 0)

    def close_round(
        self,
        round_id: int,
        *,
        status: str,
        reason: str,
        now: float,
        new_model: tuple[int, bytes, str, str, bytes | None] | None = None,
        metrics: dict[str, Any] | None = None,
        drop_update_blobs: bool = True,
        event: NewEvent | None = None,
        expect_updates: int | None = None,
    ) -> RoundRecord:
        """Close an open round; with ``new_model`` = (version, blob, sha256, spec, signature) store it atomically.

        ``expect_updates`` fences the close against other server processes: the round row is locked (as
        ``add_update`` locks it), and if the round holds another number of updates than the caller
        aggregated, nothing changes and :class:`Conflict` ``round_changed`` is raised.
        """
        with self._tx() as s:
            row = s.get(Round, round_id, with_for_update=True)
            if row is None:
                raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
            if row.status != "open":
                raise Conflict(f"round {round_id} is already {row.status}", reason="round_closed")
            if expect_updates is not None:
                n = s.scalar(select(func.count()).select_from(Update).where(Update.round_id == round_id))
                if int(n or 0) != expect_updates:
                    raise Conflict(f"round {round_id} has {n} updates, not {expect_updates}", reason="round_changed")
            row.status = status
            row.close_reason = reason
            row.closed_at = now
            row.metrics = metrics
            if new_model is not None:
                version, blob, sha, spec, signature = new_model
                s.add(
                    ModelVersion(
                        version=version, sha256=sha, spec_fingerprint=spec, blob=blob, signature=signature,
                        round_id=round_id, created_at=now,
                    )
                )
                row.new_version = version
            if drop_update_blobs:
                s.execute(update(Update).where(Update.round_id == round_id).values(blob=None))
            if event is not None:
                s.add(event.row(now))
            s.flush()
            return _round(row)

    def set_round_metrics(self, round_id: int, metrics: dict[str, Any]) -> None:
        with self._tx() as s:
            row = s.get(Round, round_id)
            if row is None:
                raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
            row.metrics = {**(row.metrics or {}), **metrics}

    # -- updates ---------------------------------------------------------------------------------
    def add_update(
        self,
        round_id: int,
        device_id: str,
        *,
        num_examples: int,
        train_loss: float | None,
        sha256: str,
        blob: bytes,
        now: float,
        size_bytes: int | None = None,
        event: NewEvent | None = None,
    ) -> UpdateRecord:
        """Record an accepted update; the (round, device) unique constraint makes duplicates atomic."""
        try:
            with self._tx() as s:
                rnd = s.get(Round, round_id, with_for_update=True)
                if rnd is None:
                    raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
                if rnd.status != "open":
                    raise Conflict(f"round {round_id} is {rnd.status}", reason="round_closed")
                row = Update(
                    round_id=round_id,
                    device_id=device_id,
                    num_examples=num_examples,
                    train_loss=train_loss,
                    sha256=sha256,
                    size_bytes=len(blob) if size_bytes is None else size_bytes,
                    blob=blob,
                    received_at=now,
                )
                s.add(row)
                if event is not None:
                    s.add(event.row(now))
                s.flush()
                return _update(row)
        except IntegrityError:
            raise DuplicateUpdate(
                f"device {device_id!r} already sent an update for round {round_id}"
            ) from None

    def has_update(self, round_id: int, device_id: str) -> bool:
        with self._tx() as s:
            q = select(Update.update_id).where(Update.round_id == round_id, Update.device_id == device_id)
            return s.scalar(q) is not None

    def round_updates(self, round_id: int) -> list[UpdateRecord]:
        with self._tx() as s:
            q = select(Update).where(Update.round_id == round_id).order_by(Update.update_id)
            return [_update(r) for r in s.scalars(q)]

    def iter_update_blobs(self, round_id: int) -> Iterator[tuple[UpdateRecord, bytes]]:
        """Yield accepted updates with their bytes one at a time (used to resume after a restart)."""
        ids = [r for r in self._update_ids(round_id)]
        for update_id in ids:
            with self._tx() as s:
                row = s.get(Update, update_id)
                if row is not None and row.blob is not None:
                    yield _update(row), bytes(row.blob)

    def update_device_ids(self, round_id: int) -> list[str]:
        """The devices with an accepted update in ``round_id``, in acceptance order."""
        with self._tx() as s:
            q = select(Update.device_id).where(Update.round_id == round_id).order_by(Update.update_id)
            return list(s.scalars(q))

    def update_blob(self, round_id: int, device_id: str) -> bytes | None:
        """One accepted update's stored bytes (``None`` once dropped at close)."""
        with self._tx() as s:
            q = select(Update.blob).where(Update.round_id == round_id, Update.device_id == device_id)
            blob = s.scalar(q)
            return bytes(blob) if blob is not None else None

    def _update_ids(self, round_id: int) -> list[int]:
        with self._tx() as s:
            q = select(Update.update_id).where(Update.round_id == round_id).order_by(Update.update_id)
            return list(s.scalars(q))

    def count_updates(self) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(Update)) or 0)

    # -- events ----------------------------------------------------------------------------------
    def add_event(
        self,
        kind: str,
        *,
        now: float,
        device_id: str | None = None,
        round_id: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        """An event on its own (a refusal, a start-up fact); a state change passes its event with ``event=``."""
        with self._tx() as s:
            s.add(NewEvent(kind, device_id, round_id, reason, detail).row(now))

    def per_device_counts(self) -> dict[str, tuple[int, int]]:
        """``{device_id: (updates accepted, requests and updates refused)}`` (the dashboard's device table)."""
        with self._tx() as s:
            accepted = {d: n for d, n in s.execute(select(Update.device_id, func.count()).group_by(Update.device_id))}
            q = select(Event.device_id, func.count()).where(
                Event.kind.in_(("request_rejected", "update_rejected")), Event.device_id.is_not(None)
            ).group_by(Event.device_id)
            refused = {d: n for d, n in s.execute(q)}
        return {d: (int(accepted.get(d, 0)), int(refused.get(d, 0))) for d in {*accepted, *refused} if d}

    def refusal_times(self, *, limit: int = 5000) -> list[tuple[float, str | None]]:
        """``(ts, reason)`` of the newest refusals, oldest first (the dashboard's refusals over time)."""
        with self._tx() as s:
            q = select(Event.ts, Event.reason).where(Event.kind.in_(("request_rejected", "update_rejected"))).order_by(
                Event.event_id.desc()).limit(limit)
            return [(float(ts), reason) for ts, reason in reversed(list(s.execute(q)))]

    def count_events_by_reason(self, kinds: Sequence[str]) -> dict[tuple[str, str | None], int]:
        """``{(kind, reason): count}`` over events of ``kinds`` (the metrics' refusals by reason)."""
        with self._tx() as s:
            q = select(Event.kind, Event.reason, func.count()).where(Event.kind.in_(kinds)).group_by(
                Event.kind, Event.reason)
            return {(kind, reason): int(n) for kind, reason, n in s.execute(q)}

    def list_events(self, *, kind: str | None = None, limit: int = 1000) -> list[EventRecord]:
        with self._tx() as s:
            q = select(Event).order_by(Event.event_id.desc()).limit(limit)
            if kind is not None:
                q = q.where(Event.kind == kind)
            return [
                EventRecord(r.event_id, r.ts, r.kind, r.device_id, r.round_id, r.reason, r.detail)
                for r in s.scalars(q)
            ]

    def device_events(self, device_id: str, kinds: tuple[str, ...], *, limit: int = 1000) -> list[EventRecord]:
        """The device's events of these kinds, newest first."""
        with self._tx() as s:
            q = (select(Event).where(Event.device_id == device_id, Event.kind.in_(kinds))
                 .order_by(Event.event_id.desc()).limit(limit))
            return [
                EventRecord(r.event_id, r.ts, r.kind, r.device_id, r.round_id, r.reason, r.detail)
                for r in s.scalars(q)
            ]

    def count_events(self, kind: str) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(Event).where(Event.kind == kind)) or 0)
