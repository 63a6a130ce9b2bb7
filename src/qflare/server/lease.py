"""Round ownership: exactly one process opens, closes and fails rounds on a database.

Every server process (every ``--workers`` worker, every server on the same PostgreSQL database)
accepts uploads into the shared tables; only the holder of the *round lease* runs the orchestrator's
clock (:meth:`qflare.server.rounds.Orchestrator.tick`). The other processes are followers.

- :class:`PostgresLease`: a session-level advisory lock (``pg_try_advisory_lock``) on a dedicated
  connection, keyed by database and schema. The database releases it when that connection dies, so
  a killed owner's lease passes to a follower at its next tick. Each acquisition increments a
  fencing token in ``qflare_round_lease``; the orchestrator's writes are fenced by the database
  itself (round rows are locked and their status checked, a close states the update count it
  aggregated and is refused if another worker added one, see ``Repository.close_round``).
- :class:`SqliteLease`: SQLite is single-process: an exclusive ``flock`` on ``<db>.lease``; a second
  server on the same file is refused.
- :class:`SoleLease`: always held (one process that built its own state, as in tests).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine, make_url

from qflare.errors import ConfigError, Conflict
from qflare.server.storage.updates import CLOSE_KEY_SQL

__all__ = ["PostgresLease", "RoundLease", "SoleLease", "SqliteLease", "open_lease", "sqlite_path"]

log = logging.getLogger("qflare.lease")

_KEY_SQL = "hashtext('qflare-rounds:' || current_database() || ':' || current_schema())"


class RoundLease(Protocol):
    """Who owns the rounds: :meth:`held` answers now, taking the lease if it is free."""

    def held(self) -> bool: ...

    def release(self) -> None: ...

    @property
    def token(self) -> int: ...

    def closing(self, round_id: int) -> AbstractContextManager[None]:
        """Hold the round's close barrier while the owner counts, aggregates and closes it."""
        ...


class SoleLease:
    """Always held: the one process on its database."""

    token = 1

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def closing(self, round_id: int) -> AbstractContextManager[None]:
        return nullcontext()  # nobody else writes to this database


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for in-memory or another dialect)."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


class SqliteLease:
    """An exclusive lock on ``<db>.lease``; :class:`ConfigError` ``database_in_use`` if another process has it."""

    token = 1

    def __init__(self, db_file: Path) -> None:
        self.path = db_file.with_name(db_file.name + ".lease")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held for the process's lifetime
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise ConfigError(
                f"SQLite is single-process: another QFLARE server already uses {db_file}; "
                "use PostgreSQL (server.db_url: postgresql://...) for several servers or workers",
                reason="database_in_use",
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()

    def held(self) -> bool:
        return self._fh is not None

    def closing(self, round_id: int) -> AbstractContextManager[None]:
        return nullcontext()  # single-process: the orchestrator's lock orders closes and uploads

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class PostgresLease:
    """The PostgreSQL advisory lock that makes one process the round owner.

    Parameters
    ----------
    engine:
        The repository's engine; one connection of its pool is kept for the lease.
    holder:
        A name for logs and the lease row (host and pid by default).
    """

    def __init__(self, engine: Engine, *, holder: str | None = None) -> None:
        self.engine = engine
        self.holder = holder or f"{os.uname().nodename}:{os.getpid()}"
        self._conn: Connection | None = None
        self._token = 0
        self._lock = threading.Lock()
        with engine.begin() as c:
            c.execute(text("CREATE TABLE IF NOT EXISTS qflare_round_lease ("
                           "id integer PRIMARY KEY, token bigint NOT NULL, holder text NOT NULL, "
                           "acquired_at timestamptz NOT NULL DEFAULT now())"))
            c.execute(text("INSERT INTO qflare_round_lease (id, token, holder) VALUES (1, 0, '') "
                           "ON CONFLICT (id) DO NOTHING"))

    @property
    def token(self) -> int:
        """The fencing token of the current holding (0 when not held); it grows with every acquisition."""
        return self._token

    def held(self) -> bool:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    return True
                except Exception:  # noqa: BLE001 - a dead connection means the database released the lock
                    log.warning("round lease lost (its database connection failed)")
                    self._drop()
            return self._try_acquire()

    def _try_acquire(self) -> bool:
        conn = self.engine.connect()
        try:
            # The database must notice a killed holder (SIGKILL, a vanished container: no FIN is sent) in
            # seconds, not after the kernel's two-hour keepalive default: its side of this connection probes.
            conn.execute(text("SET tcp_keepalives_idle = 5"))
            conn.execute(text("SET tcp_keepalives_interval = 2"))
            conn.execute(text("SET tcp_keepalives_count = 3"))
            got = bool(conn.execute(text(f"SELECT pg_try_advisory_lock({_KEY_SQL})")).scalar())
            conn.commit()
            if not got:
                conn.close()
                return False
            with self.engine.begin() as c:
                token = c.execute(
                    text("UPDATE qflare_round_lease SET token = token + 1, holder = :h, acquired_at = now() "
                         "WHERE id = 1 RETURNING token"), {"h": self.holder}
                ).scalar()
            self._conn, self._token = conn, int(token or 0)
            log.info("round lease acquired by %s (fencing token %d)", self.holder, self._token)
            return True
        except BaseException:
            conn.close()
            raise

    @contextmanager
    def closing(self, round_id: int) -> Iterator[None]:
        """The close barrier of ``round_id``, for the owner while it closes the round.

        One transaction on its own connection holds, until the block ends: a share lock on the lease row,
        after checking that its token is this holding's (else :class:`Conflict` ``stale_round_owner``: a
        newer owner exists; and no new owner can take the token while a close is running), and the
        round's exclusive close lock, which ``add_update`` takes shared: uploads that committed before
        are all in the database, uploads that come later wait and find the round closed.
        """
        conn = self.engine.connect()
        try:
            # A stopped owner must not hold the barrier forever: its session ends after this long idle.
            conn.execute(text("SET idle_in_transaction_session_timeout = '300s'"))
            token = int(conn.execute(text("SELECT token FROM qflare_round_lease WHERE id = 1 FOR SHARE")).scalar()
                        or 0)
            if self._token == 0 or token != self._token:
                raise Conflict(f"round {round_id}: this server's round lease (token {self._token}) was taken over "
                               f"(token {token}); it may not close rounds", reason="stale_round_owner")
            conn.execute(text(f"SELECT pg_advisory_xact_lock({CLOSE_KEY_SQL}, :r)"), {"r": round_id})
            yield
        finally:
            try:
                conn.rollback()
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection released its locks already
                conn.invalidate()

    def holder_now(self) -> str:
        """Who took the lease last (the row; the lock itself says whether it is still held)."""
        with self.engine.connect() as c:
            return str(c.execute(text("SELECT holder FROM qflare_round_lease WHERE id = 1")).scalar() or "")

    def _drop(self) -> None:
        conn, self._conn, self._token = self._conn, None, 0
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:  # noqa: BLE001
                pass

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text(f"SELECT pg_advisory_unlock({_KEY_SQL})"))
                    self._conn.commit()
                    self._conn.close()
                except Exception:  # noqa: BLE001 - closing the connection releases it anyway
                    self._drop()
                self._conn, self._token = None, 0


def open_lease(engine: Engine, url: str, *, shared_ok: bool, wait_seconds: float = 0.0,
               sleep: Callable[[float], None] = time.sleep) -> RoundLease:
    """The lease for a server on ``url``; refuses (``ConfigError``) a second server that cannot share.

    ``shared_ok`` says whether this server can follow another owner (in-process aggregation); with the
    enclave, each server has its own enclave and keys, so only one server may run on a database.
    ``wait_seconds``: how long a server that cannot share waits for the lease first (a restart after a
    crash: the database releases a killed holder's lock once its keepalives fail, within about 11 s).
    """
    if engine.dialect.name == "sqlite":
        path = sqlite_path(url)
        return SqliteLease(path) if path is not None else SoleLease()
    if engine.dialect.name != "postgresql":
        return SoleLease()
    lease = PostgresLease(engine)
    waited = 0.0
    while not shared_ok and not lease.held() and waited < wait_seconds:
        if waited == 0:
            log.warning("the round lease is held by %s; waiting up to %.0f s", lease.holder_now(), wait_seconds)
        sleep(1.0)
        waited += 1.0
    if not lease.held() and not shared_ok:
        u = make_url(url)
        raise ConfigError(
            f"another QFLARE server ({lease.holder_now() or 'unknown'}) owns the rounds of database "
            f"{u.database} on {u.host}; with the enclave only one server may run per database",
            reason="database_in_use",
        )
    return lease
