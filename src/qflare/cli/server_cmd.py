"""``qflare server``: run the FastAPI server."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.console import make_console
from qflare.config import load_global_config
from qflare.environment import ADMIN_TOKEN_ENV, environment
from qflare.errors import ConfigError
from qflare.logs import check_log_options, configure_logging

console = make_console(stderr=True)


DEVICE_TRUST_FILE = "device_trust.yaml"
"""Written next to the operator token at every start: the lines a device config needs to trust this server."""


def resolve_admin_token(configured: str | None, token_file: Path) -> str:
    """The operator token: ``QFLARE_ADMIN_TOKEN``, the config, or one generated into ``token_file`` (0600)."""
    from_env = environment().admin_token
    token = from_env or configured
    if token:
        return _strong(token, ADMIN_TOKEN_ENV if from_env else "server.admin_token")
    if token_file.exists():
        return _strong(token_file.read_text().strip(), str(token_file))
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    console.print(f"operator token written to {token_file} (mode 0600)")
    return token


MIN_ADMIN_TOKEN_CHARS = 16


def _strong(token: str, source: str) -> str:
    # The bearer token is the whole operator credential: a guessable one is refused, wherever it comes from.
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the operator token has {len(token)} characters; at least "
                          f"{MIN_ADMIN_TOKEN_CHARS} are required", reason="weak_admin_token")
    return token


def plaintext_exposure_warning(host: str, tls_cert: str | None) -> str | None:
    """The warning for serving plain HTTP beyond this machine (bearer token and metadata in clear), if due."""
    import ipaddress

    if tls_cert is not None or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (f"WARNING: serving plain HTTP on {host}, reachable beyond this machine: the operator's bearer token "
            "and all request metadata cross the network in clear. Use --tls-cert/--tls-key (qflare init writes "
            "a local CA and certificate) or bind 127.0.0.1 behind a TLS proxy.")


def check_tls_files(cert: str | None, key: str | None) -> None:
    """:class:`ConfigError` naming the option unless the certificate and key load as a pair."""
    import ssl

    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option}: {path} does not exist or is not a file", reason="bad_option")
    if cert is not None and key is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {cert} and {key} do not load as a PEM certificate and its key"
                              f" ({getattr(exc, 'reason', None) or exc})", reason="bad_option") from None


def server(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="global_config.yaml")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default from config: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from config: 8000)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="database URL, sqlite:///file.db or postgresql://...")] = None,
    token_file: Annotated[Path, typer.Option(help="where a generated operator token is kept")] = Path(
        ".qflare/admin_token"
    ),
    key_dir: Annotated[str | None, typer.Option(help="the server's PQ keys (default from config)")] = None,
    operators_file: Annotated[Path, typer.Option(help="dashboard accounts (qflare operator add)")] = Path(
        ".qflare/operators.json"
    ),
    tls_cert: Annotated[str | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
    tls_key: Annotated[str | None, typer.Option(help="private key for --tls-cert (PEM)")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    log_format: Annotated[str, typer.Option(help="text | json (one object per line, with request and device id)")]
    = "text",
    bench_endpoint: Annotated[bool, typer.Option(hidden=True, help="add POST /bench/bare (qflare bench auth)")]
    = False,
    workers: Annotated[int, typer.Option(help="web worker processes (PostgreSQL for more than 1; with an "
                                         "enclave they share one enclave service)")] = 1,
    runs_dir: Annotated[Path, typer.Option(help="the run's artefacts go to RUNS_DIR/<timestamp>/ (metrics.csv, "
                                           "plot, summary.json), when it finishes and when the server stops")]
    = Path("runs"),
    run_artefacts: Annotated[bool, typer.Option(help="write the run's artefacts (qflare simulate writes its own)")]
    = True,
) -> None:
    """Run the QFLARE server (rounds, registry, aggregation) until interrupted."""
    cfg = load_global_config(config)
    given = {"host": host, "port": port, "db_url": db, "key_dir": key_dir, "tls_cert": tls_cert, "tls_key": tls_key}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides:
        from qflare.config import ServerConfig, parse_config

        merged = {**cfg.server.model_dump(), **overrides}
        cfg = cfg.model_copy(update={"server": parse_config(ServerConfig, merged, source="server options")})
    # Checked before the heavy imports and the enclave start: a wrong path or URL is refused in a second.
    check_log_options(log_level, log_format)
    check_tls_files(cfg.server.tls_cert, cfg.server.tls_key)
    if cfg.aggregation.he.public_context_file is not None:
        from qflare.fl.he import load_public_context

        # CKKS: a context file holding the secret key is refused before any database or key file is created
        load_public_context(Path(cfg.aggregation.he.public_context_file).expanduser())
    exposure = plaintext_exposure_warning(cfg.server.host, cfg.server.tls_cert)
    if exposure is not None:
        console.print(f"[bold red]{exposure}[/]", highlight=False)
        logging.getLogger("qflare.server").warning(exposure)
    from qflare.server.storage import Repository

    try:
        repo = Repository(cfg.server.db_url)
    except ConfigError as exc:
        raise ConfigError(f"--db (server.db_url): {exc.message}", reason=exc.reason) from None
    from qflare.server.lease import open_lease
    from qflare.server.workers import check_workers, run_workers

    check_workers(cfg, workers, repo.engine.dialect.name)
    # One round owner per database: a second server that cannot follow it (the enclave) is refused here.
    lease = open_lease(repo.engine, cfg.server.db_url, shared_ok=cfg.enclave.backend == "none", wait_seconds=30)
    shown_db = repo.engine.url.render_as_string(hide_password=True)  # never the password
    if workers > 1:
        lease.release()
        repo.close()
        from qflare.server.operators import OperatorAccounts

        OperatorAccounts(operators_file)  # a bad accounts file is refused here, in one line, not in each worker
        token = resolve_admin_token(cfg.server.admin_token, token_file)
        console.print(f"QFLARE server: task={cfg.task} db={shown_db} {workers} workers on "
                      f"{cfg.server.host}:{cfg.server.port} ("
                      f"{'in-process aggregation' if cfg.enclave.backend == 'none' else 'one shared enclave'}"
                      ", one round owner)")
        try:
            run_workers(cfg, admin_token=token, workers=workers, log_level=log_level, log_format=log_format,
                        operators_file=operators_file, bench_endpoint=bench_endpoint)
        finally:
            if run_artefacts:  # from the database, which every worker wrote to
                from qflare.cli.run_artefacts import RunRecorder

                done = Repository(cfg.server.db_url)
                try:
                    RunRecorder(cfg, done, runs_dir, finished=lambda: True, on_written=_say_artefacts).write()
                finally:
                    done.close()
        return

    import uvicorn

    from qflare.crypto.keyfile import fingerprint
    from qflare.server.app import build_state, create_app
    from qflare.server.trust import device_config_snippet

    configure_logging(log_level, log_format)
    token = resolve_admin_token(cfg.server.admin_token, token_file)
    state = build_state(cfg, admin_token=token, repo=repo, lease=lease)
    from qflare.server.operators import OperatorAccounts

    app = create_app(state, bench_endpoint=bench_endpoint, operators=OperatorAccounts(operators_file))
    scheme = "https" if cfg.server.tls_cert else "http"
    url = f"{scheme}://{cfg.server.host}:{cfg.server.port}"
    fp = fingerprint(state.gateway.opener.kem_public_key())
    console.print(f"QFLARE server: task={cfg.task} db={shown_db} {url}"
                  f" ({'enclave' if state.enclave is not None else 'server'} KEM key {fp})")
    for bypass in cfg.demo_bypasses():  # refused with server.deployment: production
        console.print(f"DEMO ONLY: {bypass}", markup=False, highlight=False)
    ca = str(Path(cfg.server.tls_cert).parent.resolve() / "ca.pem") if cfg.server.tls_cert else None
    snippet = device_config_snippet(state, server_url=url, ca_file=ca)
    console.print("# in each device_config.yaml (paths as seen from this machine):\n" + snippet,
                  markup=False, highlight=False)
    # `qflare device provision` writes ready device configs from this file (rewritten at every start).
    trust_file = token_file.parent / DEVICE_TRUST_FILE
    trust_file.parent.mkdir(parents=True, exist_ok=True)
    trust_file.write_text(snippet + "\n", encoding="utf-8")
    console.print(f"device trust written to {trust_file} (read by qflare device provision)")
    from qflare.server.transport import uvicorn_options

    recorder = None
    if run_artefacts:  # what `qflare simulate` writes, for a run by hand (cli/run_artefacts.py)
        from qflare.cli.run_artefacts import RunRecorder

        recorder = RunRecorder(cfg, state.repo, runs_dir, finished=state.orchestrator.finished,
                               on_written=_say_artefacts)
        recorder.start()
    # Uvicorn re-raises a SIGTERM it handled once it has stopped, under the handler that was there before it:
    # make that a clean exit through the finally below (the run's artefacts), not the default's abrupt death.
    import signal

    def _stopped(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=log_level.lower(), access_log=False,
                    ssl_certfile=cfg.server.tls_cert, ssl_keyfile=cfg.server.tls_key,
                    # JSON: uvicorn's own lines go through the root logger's formatter too
                    log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG,
                    **uvicorn_options(cfg.server))  # header/body deadlines, 431 (server/transport.py)
    finally:
        if recorder is not None:
            recorder.close()


def _say_artefacts(run_dir: Path) -> None:
    console.print(f"run artefacts (metrics.csv, plot, summary.json) written to {run_dir}", markup=False,
                  highlight=False)

