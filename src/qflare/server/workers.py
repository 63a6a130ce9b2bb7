"""``qflare server --workers K``: K uvicorn worker processes on one PostgreSQL database.

Every worker accepts uploads (nonces, KEM ciphertexts and updates are checked and stored through the
database's unique constraints, so a replay sent to another worker is refused as well); the one holding
the round lease (:mod:`qflare.server.lease`) runs the round clock and aggregates, replaying what the
others accepted. With ``enclave.backend: none`` each worker aggregates in process; with an enclave the
supervising process runs one enclave behind an :class:`~qflare.server.enclave_service.EnclaveService`
and every worker forwards to it (validation by any worker, round control by the owner only, fenced).
SQLite is single-process: ``--workers`` above 1 is refused there.
"""

from __future__ import annotations

import json
import os
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

__all__ = ["SPEC_ENV", "WorkerH11Protocol", "WorkerSpec", "check_workers", "run_workers", "start_enclave_service",
           "worker_app"]

SPEC_ENV = WORKER_SPEC_ENV
HEALTHCHECK_SECONDS = 60


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
                      enclave_socket=str(service.socket_path) if service is not None else None)
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

    def to_json(self) -> str:
        return json.dumps({"config": self.config.model_dump(mode="json"), "admin_token": self.admin_token,
                           "log_level": self.log_level, "log_format": self.log_format,
                           "operators_file": self.operators_file, "bench_endpoint": self.bench_endpoint,
                           "enclave_socket": self.enclave_socket})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(config=GlobalConfig.model_validate(data["config"]), admin_token=str(data["admin_token"]),
                   log_level=str(data.get("log_level", "info")), log_format=str(data.get("log_format", "text")),
                   operators_file=data.get("operators_file"), bench_endpoint=bool(data.get("bench_endpoint")),
                   enclave_socket=data.get("enclave_socket"))


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
