"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from qflare import __version__
from qflare.config import GlobalConfig, QKDConfig
from qflare.errors import ConfigError
from qflare.fl.port import AggregationBackend
from qflare.fl.privacy import DPFixedClipping, PrivacyAccountant, central_from_config, dp_params
from qflare.fl.strategies import Strategy, get_strategy
from qflare.server.aggregation import InProcessAggregator
from qflare.server.dashboard import install_dashboard
from qflare.server.enclave_link import EnclaveOpener
from qflare.server.errors import install_error_handlers
from qflare.server.evaluation import Evaluator
from qflare.server.gateway import DeviceGateway, QKDKeyLookup, read_body_limited
from qflare.server.ingest import UploadGate, UploadGateMiddleware
from qflare.server.keys import LocalOpener, RequestOpener, ServerKeys
from qflare.server.lease import RoundLease
from qflare.server.ledger import DEFAULT_ORIGIN, AuditLog, EnclaveNoteSigner
from qflare.server.metrics import install_metrics
from qflare.server.operators import OperatorAccounts
from qflare.server.request_context import install_request_ids
from qflare.server.retention import purge_refusals
from qflare.server.rounds import Clock, Orchestrator
from qflare.server.routes import admin, device, public
from qflare.server.routes.ledger import router as ledger_router
from qflare.server.state import ServerState
from qflare.server.storage import Repository
from qflare.server.storage.ledger_store import SqlLogStore
from qflare.server.wakeup import release_on_exit_signals

if TYPE_CHECKING:
    from qflare.enclave.backend import EnclaveAggregator
    from qflare.enclave.config import EnclaveConfig
    from qflare.server.enclave_service import RemoteEnclaveAggregator

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
    lease: RoundLease | None = None,
    enclave: EnclaveAggregator | RemoteEnclaveAggregator | None = None,
) -> ServerState:
    """Wire storage, keys, enclave, gateway, aggregation backend, evaluator and orchestrator together.

    ``enclave``: the shared enclave service of ``qflare server --workers`` (:mod:`qflare.server.enclave_service`)
    instead of an enclave process of this server's own."""
    # What can be checked before anything starts is checked first (a bad evaluation file is a start-up
    # error, not a traceback at every round close).
    evaluator = (
        Evaluator(config.task, seed=config.seed, csv_path=config.evaluation.csv.source(config.evaluation.csv_path)
                  if config.evaluation.csv_path else None)
        if config.evaluation.enabled
        else None
    )
    if evaluator is not None:
        evaluator.check()
    # Central DP: a budget the planned rounds exceed is refused before the enclave starts. With an enclave
    # the wrapper is built inside it from its measured config (enclave_config_for); the accountant stays here.
    strategy, accountant = central_strategy(config)
    if backend is None and config.aggregation.he.scheme == "ckks":
        # CKKS: a context file holding the secret key is refused here, before any database, key or enclave exists
        backend = he_backend(config)
    repo = repo or Repository(config.server.db_url)
    if enclave is not None:
        backend, opener = enclave, EnclaveOpener(enclave)  # the service keeps the enclave's registry itself
    elif backend is None and opener is None and config.enclave.backend != "none":
        launched = launch_enclave(config)
        launched.clock = clock  # the time in the enclave's signed ledger entries
        attach_registrar(launched, config, repo)
        enclave = launched
        backend, opener = launched, EnclaveOpener(launched)
    opener = opener or LocalOpener(ServerKeys.load_or_create(config.server.key_dir))
    backend = backend or InProcessAggregator(strategy, max_update_norm=config.aggregation.max_update_norm,
                                             state_dir=config.server.state_dir)
    gateway = DeviceGateway(repo, opener, window_seconds=config.server.timestamp_window_seconds,
                            qkd_lookup=qkd_lookup(config.qkd) if config.qkd is not None else None)
    orch = Orchestrator(repo, config, backend, clock=clock, evaluator=evaluator, lease=lease)
    # The audit ledger (docs/ledger.md): with an enclave its checkpoints are signed inside it (sign_note)
    # and the log key is the enclave's signing key; without, the server's local key signs them.
    audit = None
    if config.ledger.enabled:
        store = SqlLogStore(repo.engine)
        interval = config.ledger.checkpoint_interval_seconds
        if enclave is not None:
            signer = EnclaveNoteSigner(DEFAULT_ORIGIN, enclave.sign_note, enclave.public_keys().signing,
                                       head=enclave.ledger_head)
            audit = AuditLog(store, signer=signer, clock=clock, checkpoint_interval=interval)
            signed_size, _ = enclave.ledger_head()
            if signed_size > audit.log.size():
                enclave.close()
                raise ConfigError(
                    f"the enclave signed a ledger checkpoint of size {signed_size}, but the ledger in "
                    f"{config.server.db_url} holds {audit.log.size()} entries: the database was replaced or "
                    "rolled back, and the enclave will not sign a shorter log. Restore the database, or start "
                    f"a new log with a new enclave identity (move {config.enclave.work_dir} away)",
                    reason="ledger_rolled_back")
        else:
            audit = AuditLog(store, ServerKeys.load_or_create(config.server.key_dir).signing, clock=clock,
                             checkpoint_interval=interval)
        audit.write_log_key(config.server.key_dir)
    orch.ledger = audit
    orch.privacy = accountant
    if accountant is not None:
        for _ in range(orch.completed_rounds()):  # a restarted server has spent these already
            accountant.spend(config.rounds.fraction)
    gateway.ledger = audit
    if enclave is not None and audit is not None:
        # The enclave's quote at start, its nonce the log's current root (the quote is bound to the log).
        ident = enclave.identity()
        audit.enclave_quote_published(ident.measurement, enclave.quote(audit.log.root()), ident.public_keys.encode())
    return ServerState(
        config=config, repo=repo, orchestrator=orch, gateway=gateway, admin_token=admin_token, clock=clock,
        enclave=enclave, ledger=audit,
    )


def he_backend(config: GlobalConfig) -> AggregationBackend:
    """The CKKS backend (``aggregation.he.scheme: ckks``, docs/privacy.md): sums under the public context."""
    from qflare.server.he_aggregation import HEAggregator

    assert config.aggregation.he.public_context_file is not None  # HEConfig requires it
    return HEAggregator(Path(config.aggregation.he.public_context_file).expanduser())


def central_strategy(config: GlobalConfig) -> tuple[Strategy, PrivacyAccountant | None]:
    """The aggregation rule, wrapped for central DP as ``aggregation.privacy`` says, and the run's accountant."""
    return central_from_config(
        get_strategy(config.aggregation.rule, **config.aggregation.params),
        **config.aggregation.privacy.model_dump(), sampling_rate=config.rounds.fraction, rounds=config.rounds.total,
    )


def enclave_config_for(config: GlobalConfig) -> EnclaveConfig:
    """The enclave's own (measured) configuration: the update norm bound and size limit go inside it,
    so the host cannot lift them without changing the measurement devices pin."""
    from qflare.enclave.config import EnclaveConfig
    from qflare.enclave.operator import OperatorKey

    strategy, _ = central_strategy(config)
    return EnclaveConfig(
        max_update_norm=config.aggregation.max_update_norm,
        max_payload_bytes=max(config.server.max_update_bytes, 1024),
        aggregation_rule=config.aggregation.rule,
        aggregation_params=dict(config.aggregation.params),
        # The enclave pins the operator key and checks device signatures itself (docs/enclave.md).
        operator_key=OperatorKey.load_or_create(config.server.key_dir).public_hex,
        ledger_origin=DEFAULT_ORIGIN,  # the only origin the enclave signs checkpoints for
        # Central DP inside the enclave: the resolved noise multiplier and clip are measured.
        privacy=dp_params(strategy) if isinstance(strategy, DPFixedClipping) else {},
    )


def attach_registrar(enclave: EnclaveAggregator, config: GlobalConfig, repo: Repository) -> None:
    """Let the enclave's registry follow the device records: every enrolled device now, then each
    device's current statement before its update is validated (enrolment, revocation)."""
    from qflare.enclave.operator import DeviceRegistrar, OperatorKey

    enclave.registrar = DeviceRegistrar(OperatorKey.load_or_create(config.server.key_dir), repo.get_device)
    enclave.sync_devices([d.device_id for d in repo.list_devices()])


def launch_enclave(config: GlobalConfig) -> EnclaveAggregator:
    """Start the enclave process (``config.enclave``); it generates or unseals its keys itself."""
    from qflare.enclave.backend import EnclaveAggregator

    return EnclaveAggregator.launch(
        config.enclave.work_dir, backend=config.enclave.backend,  # type: ignore[arg-type]
        config=enclave_config_for(config), call_timeout=config.enclave.call_timeout_seconds,
    )


NONCE_PURGE_EVERY = 50  # ticks


def _tick(state: ServerState, n: int) -> None:
    state.orchestrator.tick()
    state.repo.checkpoint_wal()  # SQLite: a WAL past its bound is copied back and truncated (storage/engine.py)
    if state.ledger is not None:
        # Checkpoints by the round owner only (token 0: a follower), so that an enclave, which signs no
        # checkpoint smaller than its last, is not asked by a worker whose view of the log lags.
        state.ledger.tick(checkpoint=state.orchestrator.lease.token != 0)
    if n % NONCE_PURGE_EVERY == 0:
        state.repo.purge_nonces(now=state.clock())
        cfg = state.config.server
        purge_refusals(state.repo.engine, before=state.clock() - cfg.refusal_event_retention_seconds,
                       keep_at_most=cfg.max_refusal_events)


def qkd_lookup(cfg: QKDConfig) -> QKDKeyLookup:
    """The server is the slave SAE: it fetches each device's QKD key by id from its own KME."""
    from qflare.qkd.client import KMEClient
    from qflare.qkd.keysource import QKDKeySource

    client = KMEClient(cfg.kme_url, cert=cfg.cert, key=cfg.key, ca=cfg.ca, timeout=cfg.timeout_seconds)
    return QKDKeySource(client, mode="hybrid", key_size_bits=cfg.key_size_bits).lookup_for_request


async def _ticker(state: ServerState) -> None:
    n = 0
    while True:
        try:
            await run_in_threadpool(_tick, state, n)
        except Exception:  # the ticker must survive anything one tick raises; the next tick retries
            log.exception("round tick failed")
        n += 1
        await asyncio.sleep(TICK_SECONDS)


async def _qkd_watcher(state: ServerState) -> None:
    """Log aborted QKD frames of the KME link in the ledger (``server/qkd_watch.py``)."""
    from qflare.server.qkd_watch import WATCH_SECONDS, QkdLinkWatch

    watch = QkdLinkWatch()
    while True:
        try:
            await run_in_threadpool(watch.poll, state)
        except Exception:  # the watcher must survive a KME or ledger failure; the next poll retries
            log.exception("QKD link watch failed")
        await asyncio.sleep(WATCH_SECONDS)


def create_app(state: ServerState, *, run_ticker: bool = True, bench_endpoint: bool = False,
               operators: OperatorAccounts | None = None) -> FastAPI:
    """Create the app around ``state``; with ``run_ticker`` a background task drives deadlines.

    ``operators`` are the named accounts that may sign in to ``/dashboard`` (the operator token always may).

    ``bench_endpoint`` adds ``POST /bench/bare``, an unauthenticated endpoint doing the same framework
    work as a device route (read the body, answer small JSON), the baseline of ``qflare bench auth``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.orchestrator.bootstrap)
        release_on_exit_signals(state.orchestrator.changed)  # Ctrl-C answers held long-polls at once
        tasks = [asyncio.create_task(_ticker(state))] if run_ticker else []
        if run_ticker and state.config.qkd is not None and state.ledger is not None:
            tasks.append(asyncio.create_task(_qkd_watcher(state)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.enclave is not None:
                await run_in_threadpool(state.enclave.close)

    app = FastAPI(
        title="QFLARE",
        version=__version__,
        description="Quantum-safe federated learning server: device registry, training rounds, aggregation.",
        lifespan=lifespan,
    )
    app.state.qflare = state
    install_error_handlers(app)
    # Inside the metrics and request-id middlewares, so that busy answers are counted and carry an id.
    app.state.upload_gate = UploadGate(state.config.server.max_uploads_in_flight)
    app.add_middleware(UploadGateMiddleware, gate=app.state.upload_gate)
    install_metrics(app, state)
    install_dashboard(app, state, operators)
    install_request_ids(app)  # outermost: the request id is bound before anything logs
    app.include_router(device.router)
    app.include_router(admin.router)
    app.include_router(public.router)
    app.include_router(ledger_router)

    if bench_endpoint:

        @app.post("/bench/bare", include_in_schema=False)
        async def bare(request: Request) -> Response:
            body = await read_body_limited(request, state.config.server.max_request_bytes)
            data = json.dumps({"device_id": "bare", "server_time": state.clock(), "n": len(body)}).encode()
            return Response(data, media_type="application/json")

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
