"""``qflare server``: run the FastAPI server."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qflare.config import load_global_config

console = Console(stderr=True)


def resolve_admin_token(configured: str | None, token_file: Path) -> str:
    """The operator token: ``QFLARE_ADMIN_TOKEN``, the config, or one generated into ``token_file`` (0600)."""
    token = os.environ.get("QFLARE_ADMIN_TOKEN") or configured
    if token:
        return token
    if token_file.exists():
        return token_file.read_text().strip()
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    console.print(f"operator token written to {token_file} (mode 0600)")
    return token


def server(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="global_config.yaml")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default from config: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from config: 8000)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="database URL, sqlite:///file.db or postgresql://...")] = None,
    token_file: Annotated[Path, typer.Option(help="where a generated operator token is kept")] = Path(
        ".qflare/admin_token"
    ),
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run the QFLARE server (rounds, registry, aggregation) until interrupted."""
    import uvicorn

    from qflare.server.app import build_state, create_app

    cfg = load_global_config(config)
    overrides = {k: v for k, v in {"host": host, "port": port, "db_url": db}.items() if v is not None}
    if overrides:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=overrides)})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = resolve_admin_token(cfg.server.admin_token, token_file)
    state = build_state(cfg, admin_token=token)
    app = create_app(state)
    console.print(f"QFLARE server: task={cfg.task} db={cfg.server.db_url} http://{cfg.server.host}:{cfg.server.port}")
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=log_level.lower(), access_log=False)
