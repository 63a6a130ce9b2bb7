"""Engines for SQLite and PostgreSQL, and the transaction helper every store shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from qflare.errors import ConfigError


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
    # After a checkpoint resets the WAL, the file is cut back to this (it kept its largest size).
    cur.execute(f"PRAGMA journal_size_limit={WAL_MAX_BYTES}")
    cur.close()


WAL_MAX_BYTES = 64 * 2**20
"""A SQLite WAL larger than this is checkpointed and truncated (:meth:`StoreBase.checkpoint_wal`)."""


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



class StoreBase:
    """An engine and its sessions; each store mixin's method is one transaction (:meth:`_tx`)."""

    url: str
    engine: Engine
    _sessions: sessionmaker[Session]

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    wal_max_bytes: int = WAL_MAX_BYTES

    def checkpoint_wal(self) -> bool:
        """SQLite: when the WAL has grown past ``wal_max_bytes``, copy it into the database and truncate it.

        SQLite's own checkpoints are passive: with readers always present (long-polls, the ticker) the
        WAL is never restarted and grows by every 4 MB update written (4 GB over a 1000-update round,
        and each page read then searches a WAL index that large). A TRUNCATE checkpoint waits (the busy
        timeout) for the readers of older snapshots, then starts the WAL afresh. Whether it ran."""
        if self.engine.dialect.name != "sqlite" or not self.engine.url.database:
            return False
        try:
            size = os.path.getsize(f"{self.engine.url.database}-wal")
        except OSError:
            return False
        if size <= self.wal_max_bytes:
            return False
        with self.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return True
