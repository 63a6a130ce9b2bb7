"""Devices and their one-time enrollment tokens."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from qflare.errors import AuthenticationError, Conflict, NotFound
from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    DeviceRecord,
    NewEvent,
    _device,
)
from qflare.server.storage.tables import Device, EnrollmentToken


class DeviceStore(StoreBase):
    """Devices and their one-time enrollment tokens."""

    def add_device(
        self,
        device_id: str,
        *,
        now: float,
        public_key: bytes,
        fingerprint: str,
        key_source: str = "mlkem",
        event: NewEvent | None = None,
        max_examples: int | None = None,
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
                    max_examples=max_examples,
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
            fingerprint=m["fingerprint"], max_examples=m["max_examples"],
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

    def count_devices(self, status: str | None = None) -> int:
        """How many enrolled devices have ``status`` (``active``: eligible for rounds, whether seen lately or not;
        ``None``: all of them)."""
        q = select(func.count()).select_from(Device)
        with self._tx() as s:
            return int(s.scalar(q if status is None else q.where(Device.status == status)) or 0)

    def count_active_devices(self, *, since: float) -> int:
        """How many :meth:`active_devices` there are (a count in SQL: the status is polled)."""
        q = select(func.count()).select_from(Device).where(Device.status == "active", Device.last_seen_at >= since)
        with self._tx() as s:
            return int(s.scalar(q) or 0)

    def active_devices(self, *, since: float) -> list[str]:
        with self._tx() as s:
            q = (
                select(Device.device_id)
                .where(Device.status == "active", Device.last_seen_at >= since)
                .order_by(Device.device_id)
            )
            return list(s.scalars(q))
