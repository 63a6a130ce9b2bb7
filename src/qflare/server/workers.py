"""``qflare server --workers K``: K uvicorn worker processes on one PostgreSQL database.

Every worker accepts uploads (nonces, KEM ciphertexts and updates are checked and stored through the
database's unique constraints, so a replay sent to another worker is refused as well); the one holding
the round lease (:mod:`qflare.server.lease`) runs the round clock and aggregates, replaying what the
others accepted. With ``enclave.backend: none`` each worker aggregates in process; with an enclave the
supervising process runs one enclave behind an :class:`~qflare.server.enclave_service.EnclaveService`
and every worker forwards to it (validation by any worker, round control by the owner only, fenced).
SQLite is single-process: ``--workers`` above 1 is refused there.

The supervising process (uvicorn's parent, and the enclave service's) is the one process nothing here
replaces: if it dies, each worker's :class:`SupervisorWatch` notices (at once on Linux through
``PR_SET_PDEATHSIG``, else within :data:`SUPERVISOR_POLL_SECONDS`), logs one line and stops the worker the
way its supervisor would (SIGTERM: uvicorn's graceful stop), so that the port and the round lease are free
for a restart; a worker still running after the grace exits regardless, and one stuck past even that is
ended by faulthandler's watchdog, its threads' stacks in the log. The enclave process reads end-of-file on
its channel and exits by itself.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from qflare.config import GlobalConfig
from qflare.environment import WORKER_SPEC_ENV
from qflare.errors import ConfigError
from qflare.server.transport import GuardedH11Protocol

if TYPE_CHECKING:
    from qflare.server.enclave_service import EnclaveService

__all__ = ["SPEC_ENV", "SupervisorWatch", "WorkerH11Protocol", "WorkerSpec", "check_workers", "run_workers",
           "start_enclave_service", "worker_app"]

log = logging.getLogger("qflare.workers")

SPEC_ENV = WORKER_SPEC_ENV
HEALTHCHECK_SECONDS = 60
SUPERVISOR_POLL_SECONDS = 1.0
"""How often a worker checks that its supervising process is still its parent (where no signal says so)."""
SUPERVISOR_GONE_GRACE_SECONDS = 10.0
"""How long a worker whose supervisor is gone gives uvicorn's graceful stop before it exits regardless."""
SUPERVISOR_GONE_EXIT = 69  # EX_UNAVAILABLE: what the worker served through is gone
SUPERVISOR_GONE_BACKSTOP_SECONDS = 5.0
"""After the grace, how long the backstop waits before it writes every thread's stack to the log and ends the
worker (exit status 1) if even the forced exit could not run (a thread stuck holding a lock it needs)."""
PARENT_DEATH_SIGNAL = signal.SIGUSR2
"""Linux sends this to a worker when its supervising process dies (``PR_SET_PDEATHSIG``); it only wakes the
watch, which checks the parent itself."""
_PR_SET_PDEATHSIG = 1


def check_workers(config: GlobalConfig, workers: int, dialect: str) -> None:
    """:class:`ConfigError` (one line, the reason) if ``workers`` processes cannot share this configuration."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}", reason="bad_option")
    if workers == 1:
        return
    if dialect == "sqlite":
        raise ConfigError(f"--workers {workers}: SQLite is single-process; use PostgreSQL "
                          "(--db postgresql://...) for several workers", reason="bad_option")


def run_workers(config: GlobalConfig, *, admin_token: str, workers: int, log_level: str, log_format: str = "text",
                operators_file: Path | None = None, bench_endpoint: bool = False) -> None:
    """Serve with ``workers`` processes until interrupted (the server keys are created first, once).

    Each worker gets what a single ``qflare server`` process has: the dashboard's operator accounts, the
    log level and format (every line names its worker's pid), and the transport limits of ``server:``.
    """
    from qflare.logs import configure_logging
    from qflare.server.keys import ServerKeys

    ServerKeys.load_or_create(config.server.key_dir)  # before the fork: every worker loads the same keys
    service = None
    if config.enclave.backend != "none":
        configure_logging(log_level, log_format, process_ids=True)  # the service logs from this process
        service = start_enclave_service(config)
    spec = WorkerSpec(config=config, admin_token=admin_token, log_level=log_level, log_format=log_format,
                      operators_file=str(operators_file.resolve()) if operators_file is not None else None,
                      bench_endpoint=bench_endpoint,
                      enclave_socket=str(service.socket_path) if service is not None else None,
                      supervisor_pid=os.getpid())  # uvicorn's supervisor runs in this process
    os.environ[SPEC_ENV] = spec.to_json()  # read by each worker (spawned: a fresh interpreter)
    try:
        _serve(config, workers=workers, log_level=log_level, log_format=log_format)
    finally:
        if service is not None:
            service.close()


def start_enclave_service(config: GlobalConfig) -> EnclaveService:
    """The one enclave of a ``--workers`` server, served to its workers (in this, the supervising process)."""
    from qflare.server.app import attach_registrar, launch_enclave
    from qflare.server.enclave_service import EnclaveService
    from qflare.server.storage import Repository

    repo = Repository(config.server.db_url)
    enclave = launch_enclave(config)
    try:
        attach_registrar(enclave, config, repo)
        return EnclaveService(enclave, repo).start()
    except BaseException:
        enclave.close()
        raise


def _serve(config: GlobalConfig, *, workers: int, log_level: str, log_format: str) -> None:
    import uvicorn

    from qflare.server.transport import uvicorn_options

    cfg = config.server
    uvicorn.run("qflare.server.workers:worker_app", factory=True, workers=workers, host=cfg.host, port=cfg.port,
                log_level=log_level.lower(), access_log=False, ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key,
                # JSON: uvicorn's own lines go through the root logger's JSON formatter too
                log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG,
                # the guarded protocol by name: a class made at run time cannot reach a spawned worker
                **{**uvicorn_options(cfg), "http": "qflare.server.workers:WorkerH11Protocol"},
                # uvicorn kills a worker whose health-check thread does not answer in time (default 5 s): a
                # round owner replaying and aggregating hundreds of 4 MB updates on a loaded machine was killed
                # so (500 devices, 2 shared cores); a real hang is still caught, a minute later
                timeout_worker_healthcheck=HEALTHCHECK_SECONDS)


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker process is handed (as JSON in :data:`SPEC_ENV`)."""

    config: GlobalConfig
    admin_token: str
    log_level: str = "info"
    log_format: str = "text"
    operators_file: str | None = None
    bench_endpoint: bool = False
    enclave_socket: str | None = None
    """The supervising process's :class:`~qflare.server.enclave_service.EnclaveService` (with an enclave)."""
    supervisor_pid: int | None = None
    """The supervising process (each worker's parent); a worker stops when it is gone."""

    def to_json(self) -> str:
        return json.dumps({"config": self.config.model_dump(mode="json"), "admin_token": self.admin_token,
                           "log_level": self.log_level, "log_format": self.log_format,
                           "operators_file": self.operators_file, "bench_endpoint": self.bench_endpoint,
                           "enclave_socket": self.enclave_socket, "supervisor_pid": self.supervisor_pid})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(config=GlobalConfig.model_validate(data["config"]), admin_token=str(data["admin_token"]),
                   log_level=str(data.get("log_level", "info")), log_format=str(data.get("log_format", "text")),
                   operators_file=data.get("operators_file"), bench_endpoint=bool(data.get("bench_endpoint")),
                   enclave_socket=data.get("enclave_socket"),
                   supervisor_pid=int(data["supervisor_pid"]) if data.get("supervisor_pid") else None)


def _set_parent_death_signal(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent dies; ``False`` where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), ctypes.c_ulong(0),
                              ctypes.c_ulong(0), ctypes.c_ulong(0))) == 0
    except (OSError, AttributeError):
        return False


def _stop_gracefully() -> None:
    """What the supervisor does to stop a worker: SIGTERM (uvicorn finishes the requests in flight)."""
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_now() -> None:
    """Flush the log lines said so far (every logger's handlers, as ``logging.shutdown`` would, but skipping
    one another thread holds: no waiting here) and exit."""
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if handler.lock is not None and handler.lock.acquire(timeout=1.0):
            try:
                handler.flush()
            finally:
                handler.lock.release()
    os._exit(SUPERVISOR_GONE_EXIT)


def _arm_backstop(seconds: float) -> None:
    """faulthandler's watchdog: a C thread that needs neither the GIL nor any lock, so it fires even where
    every Python thread of the worker is stuck; it writes each thread's stack to stderr, then ``_exit(1)``."""
    faulthandler.dump_traceback_later(seconds, exit=True)


class SupervisorWatch:
    """Stops this worker when its supervising process is gone (killed, crashed), instead of serving on as an
    orphan that holds the port and the round lease and answers 503 to every enclave call.

    :meth:`start` (in the worker's main thread, before anything slow) asks Linux for
    :data:`PARENT_DEATH_SIGNAL` on the supervisor's death and starts a daemon thread that also checks
    ``os.getppid()`` every ``poll_seconds`` (the portable fallback; it also covers a supervisor that died
    before the signal was asked for). When the parent is no longer ``supervisor_pid``, the thread logs one
    line, removes the dead supervisor's enclave socket, and calls ``stop`` (SIGTERM to itself: uvicorn's
    graceful stop, the path an orderly shutdown takes, after which the worker is terminated by that
    SIGTERM); if the worker still runs ``grace_seconds`` later, ``exit_now`` (exit status
    :data:`SUPERVISOR_GONE_EXIT`). Before any of that (the log line itself waits for the log handler's lock)
    it arms ``arm_backstop`` for ``backstop_seconds`` after the grace: the worker ends even when a thread
    stuck on a lock would keep the others from finishing, and its log shows where each thread was.
    """

    def __init__(self, supervisor_pid: int, *, enclave_socket: str | None = None,
                 poll_seconds: float = SUPERVISOR_POLL_SECONDS, grace_seconds: float = SUPERVISOR_GONE_GRACE_SECONDS,
                 backstop_seconds: float = SUPERVISOR_GONE_BACKSTOP_SECONDS,
                 getppid: Callable[[], int] = os.getppid, stop: Callable[[], None] = _stop_gracefully,
                 exit_now: Callable[[], None] = _exit_now,
                 arm_backstop: Callable[[float], None] = _arm_backstop) -> None:
        self.supervisor_pid = supervisor_pid
        self.enclave_socket = enclave_socket
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.backstop_seconds = backstop_seconds
        self._arm_backstop = arm_backstop
        self._getppid = getppid
        self._stop = stop
        self._exit_now = exit_now
        self._wake = threading.Event()
        self.parent_death_signal = False
        """Whether Linux signals the supervisor's death (else the watch polls only)."""

    def start(self) -> SupervisorWatch:
        if threading.current_thread() is threading.main_thread():  # signal handlers: the main thread only
            signal.signal(PARENT_DEATH_SIGNAL, lambda _sig, _frame: self._wake.set())
            self.parent_death_signal = _set_parent_death_signal(PARENT_DEATH_SIGNAL)
        threading.Thread(target=self._watch, name="supervisor-watch", daemon=True).start()
        return self

    def supervisor_alive(self) -> bool:
        return self._getppid() == self.supervisor_pid

    def _watch(self) -> None:
        while self.supervisor_alive():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
        self._arm_backstop(self.grace_seconds + self.backstop_seconds)
        log.error("the supervising process (pid %d) is gone (this worker's parent is now pid %d): stopping this "
                  "worker so that its port and round lease are free for a restart", self.supervisor_pid,
                  self._getppid())
        if self.enclave_socket is not None:  # the dead supervisor's: nobody serves it any more
            for remove, path in ((os.unlink, self.enclave_socket), (os.rmdir, os.path.dirname(self.enclave_socket))):
                try:
                    remove(path)
                except OSError:
                    pass  # the other worker removed it, or the directory holds something else
        self._stop()
        time.sleep(self.grace_seconds)
        self._exit_now()


class WorkerH11Protocol(GuardedH11Protocol):
    """The guarded h11 protocol (:mod:`qflare.server.transport`) with the limits :func:`worker_app` sets."""


def worker_app() -> FastAPI:
    """One worker's app, built from :data:`SPEC_ENV` (uvicorn's factory, in each worker process)."""
    from qflare.environment import environment
    from qflare.logs import configure_logging
    from qflare.server.app import build_state, create_app
    from qflare.server.lease import PostgresLease
    from qflare.server.operators import OperatorAccounts
    from qflare.server.storage import Repository
    from qflare.server.transport import limits_for

    text = environment().worker_spec
    if text is None:
        raise ConfigError(f"{SPEC_ENV} is not set: worker_app runs under qflare server --workers", reason="bad_option")
    spec = WorkerSpec.from_json(text)
    config = spec.config
    # Before the database is opened: Alembic's start-up lines follow the level (shown at debug only).
    configure_logging(spec.log_level, spec.log_format, process_ids=True)
    faulthandler.enable()  # a fatal signal (SIGSEGV, SIGABRT: kill -ABRT) writes each thread's stack to the log
    # Before anything slow: a worker whose supervisor died while it started stops as well.
    SupervisorWatch(spec.supervisor_pid or os.getppid(), enclave_socket=spec.enclave_socket).start()
    WorkerH11Protocol.limits = limits_for(config.server)
    repo = Repository(config.server.db_url)
    lease = PostgresLease(repo.engine)
    enclave = None
    if spec.enclave_socket is not None:
        from qflare.server.enclave_service import RemoteEnclaveAggregator

        enclave = RemoteEnclaveAggregator(spec.enclave_socket, lease=lease,
                                          timeout=config.enclave.call_timeout_seconds)
    state = build_state(config, admin_token=spec.admin_token, repo=repo, lease=lease, enclave=enclave)
    operators = OperatorAccounts(Path(spec.operators_file)) if spec.operators_file else None
    return create_app(state, bench_endpoint=spec.bench_endpoint, operators=operators)
