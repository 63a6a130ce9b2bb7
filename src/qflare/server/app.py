"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from qflare import __version__
from qflare.config import GlobalConfig
from qflare.server.aggregation import AggregationBackend, InProcessAggregator
from qflare.server.errors import install_error_handlers
from qflare.server.evaluation import Evaluator
from qflare.server.gateway import DeviceGateway
from qflare.server.keys import LocalOpener, RequestOpener, ServerKeys
from qflare.server.rounds import Clock, Orchestrator
from qflare.server.routes import admin, device, public
from qflare.server.state import ServerState
from qflare.server.storage import Repository

log = logging.getLogger("qflare.server")

TICK_SECONDS = 0.2


def build_state(
    config: GlobalConfig,
    *,
    admin_token: str,
    repo: Repository | None = None,
    backend: AggregationBackend | None = None,
    clock: Clock = time.time,
    opener: RequestOpener | None = None,
) -> ServerState:
    """Wire storage, keys, gateway, aggregation backend, evaluator and orchestrator together."""
    repo = repo or Repository(config.server.db_url)
    opener = opener or LocalOpener(ServerKeys.load_or_create(config.server.key_dir))
    gateway = DeviceGateway(repo, opener, window_seconds=config.server.timestamp_window_seconds)
    backend = backend or InProcessAggregator(max_update_norm=config.aggregation.max_update_norm)
    evaluator = (
        Evaluator(config.task, seed=config.seed, csv_path=config.evaluation.csv_path)
        if config.evaluation.enabled
        else None
    )
    orch = Orchestrator(repo, config, backend, clock=clock, evaluator=evaluator)
    return ServerState(
        config=config, repo=repo, orchestrator=orch, gateway=gateway, admin_token=admin_token, clock=clock
    )


NONCE_PURGE_EVERY = 50  # ticks


def _tick(state: ServerState, n: int) -> None:
    state.orchestrator.tick()
    if n % NONCE_PURGE_EVERY == 0:
        state.repo.purge_nonces(now=state.clock())


async def _ticker(state: ServerState) -> None:
    n = 0
    while True:
        try:
            await run_in_threadpool(_tick, state, n)
        except Exception:  # the ticker must survive anything one tick raises; the next tick retries
            log.exception("round tick failed")
        n += 1
        await asyncio.sleep(TICK_SECONDS)


def create_app(state: ServerState, *, run_ticker: bool = True) -> FastAPI:
    """Create the app around ``state``; with ``run_ticker`` a background task drives deadlines."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.orchestrator.bootstrap)
        task = asyncio.create_task(_ticker(state)) if run_ticker else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="QFLARE",
        version=__version__,
        description="Quantum-safe federated learning server: device registry, training rounds, aggregation.",
        lifespan=lifespan,
    )
    app.state.qflare = state
    install_error_handlers(app)
    app.include_router(device.router)
    app.include_router(admin.router)
    app.include_router(public.router)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
