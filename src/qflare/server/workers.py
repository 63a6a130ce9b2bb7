"""``qflare server --workers K``: K uvicorn worker processes on one PostgreSQL database.

Every worker accepts uploads (nonces, KEM ciphertexts and updates are checked and stored through the
database's unique constraints, so a replay sent to another worker is refused as well); the one holding
the round lease (:mod:`qflare.server.lease`) runs the round clock and aggregates, replaying what the
others accepted. Aggregation is in process: one enclave service shared by several web workers is not
built yet, so ``--workers`` above 1 is refused with the enclave, and on SQLite (single-process).
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI

from qflare.config import GlobalConfig
from qflare.errors import ConfigError

__all__ = ["SPEC_ENV", "check_workers", "run_workers", "worker_app"]

SPEC_ENV = "QFLARE_WORKER_SPEC"


def check_workers(config: GlobalConfig, workers: int, dialect: str) -> None:
    """:class:`ConfigError` (one line, the reason) if ``workers`` processes cannot share this configuration."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}", reason="bad_option")
    if workers == 1:
        return
    if dialect == "sqlite":
        raise ConfigError(f"--workers {workers}: SQLite is single-process; use PostgreSQL "
                          "(--db postgresql://...) for several workers", reason="bad_option")
    if config.enclave.backend != "none":
        raise ConfigError(f"--workers {workers}: several web workers in front of one enclave service are not "
                          "supported yet; use enclave.backend: none (in-process aggregation) or one worker",
                          reason="bad_option")


def run_workers(config: GlobalConfig, *, admin_token: str, workers: int, log_level: str,
                bench_endpoint: bool = False) -> None:
    """Serve with ``workers`` processes until interrupted (the server keys are created first, once)."""
    import uvicorn

    from qflare.server.keys import ServerKeys

    ServerKeys.load_or_create(config.server.key_dir)  # before the fork: every worker loads the same keys
    os.environ[SPEC_ENV] = json.dumps({"config": config.model_dump(mode="json"), "admin_token": admin_token,
                                       "bench_endpoint": bench_endpoint})
    uvicorn.run("qflare.server.workers:worker_app", factory=True, workers=workers, host=config.server.host,
                port=config.server.port, log_level=log_level.lower(), access_log=False,
                ssl_certfile=config.server.tls_cert, ssl_keyfile=config.server.tls_key)


def worker_app() -> FastAPI:
    """One worker's app, built from :data:`SPEC_ENV` (uvicorn's factory, in each worker process)."""
    import logging

    from qflare.server.app import build_state, create_app
    from qflare.server.lease import PostgresLease
    from qflare.server.storage import Repository

    spec = json.loads(os.environ[SPEC_ENV])
    config = GlobalConfig.model_validate(spec["config"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    repo = Repository(config.server.db_url)
    state = build_state(config, admin_token=spec["admin_token"], repo=repo, lease=PostgresLease(repo.engine))
    return create_app(state, bench_endpoint=bool(spec["bench_endpoint"]))
