"""Storage: the only part of QFLARE that knows SQL (SQLAlchemy 2; SQLite file or PostgreSQL URL)."""

from qflare.server.storage.repo import (
    DeviceRecord,
    EventRecord,
    ModelRecord,
    NewEvent,
    Repository,
    RoundRecord,
    UpdateRecord,
)

__all__ = ["DeviceRecord", "EventRecord", "ModelRecord", "NewEvent", "Repository", "RoundRecord", "UpdateRecord"]
