"""The storage layer: one :class:`Repository` over SQLAlchemy, returning plain frozen records.

Nothing outside this package sees a SQLAlchemy object. Every method is one transaction (a state change
with its event, ``event=``), so a crash between two calls leaves the database in a state the orchestrator
can resume from. Each aggregate has its own store (devices.py, nonces.py, models.py, rounds.py,
updates.py, events.py); :class:`Repository` is their union over one engine.
"""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker

from qflare.errors import ConfigError
from qflare.server.storage.devices import DeviceStore
from qflare.server.storage.engine import _first_line, make_engine, where
from qflare.server.storage.events import EventStore
from qflare.server.storage.models import ModelStore
from qflare.server.storage.nonces import NonceStore
from qflare.server.storage.outbox import OutboxStore
from qflare.server.storage.records import (
    KEM_CIPHERTEXT_SCOPE,
    DeviceRecord,
    EventRecord,
    ModelRecord,
    NewEvent,
    RoundRecord,
    UpdateRecord,
)
from qflare.server.storage.rounds import RoundStore
from qflare.server.storage.schema import upgrade_schema
from qflare.server.storage.updates import UpdateStore

__all__ = [
    "KEM_CIPHERTEXT_SCOPE",
    "DeviceRecord",
    "EventRecord",
    "ModelRecord",
    "NewEvent",
    "Repository",
    "RoundRecord",
    "UpdateRecord",
    "make_engine",
    "where",
]


class Repository(DeviceStore, NonceStore, ModelStore, RoundStore, UpdateStore, EventStore, OutboxStore):
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
            upgrade_schema(self.engine)  # Alembic: a new database, or an older one upgraded in place
        except (OperationalError, InterfaceError) as exc:
            self.engine.dispose()
            raise ConfigError(f"cannot reach the database at {where(self.engine)}: "
                              f"{_first_line(exc, self.engine.url.password)}", reason="database_unreachable") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)


    def close(self) -> None:
        self.engine.dispose()
