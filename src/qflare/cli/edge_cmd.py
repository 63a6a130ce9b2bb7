"""``qflare edge``: run one edge node."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from qflare.config import load_device_config


def edge(
    config: Annotated[Path, typer.Option("--config", "-c", help="device_config.yaml")],
    device_id: Annotated[str | None, typer.Option(help="overrides device_id in the config")] = None,
    server_url: Annotated[str | None, typer.Option(help="overrides server_url in the config")] = None,
    max_rounds: Annotated[int | None, typer.Option(help="stop after training this many rounds")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Poll the server for tasks, train on local data, upload updates, repeat."""
    from qflare.edge.audit import build_auditor
    from qflare.edge.node import EdgeNode
    from qflare.edge.setup import build_client

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the node's own log
    cfg = load_device_config(config)
    updates = {k: v for k, v in {"device_id": device_id, "server_url": server_url}.items() if v is not None}
    if updates:
        cfg = cfg.model_copy(update=updates)
    with build_client(cfg, config.parent) as client:
        auditor = build_auditor(cfg, config.parent, client.http)
        stats = EdgeNode(cfg, client, auditor=auditor).run(max_rounds=max_rounds)
    logging.getLogger("qflare.edge").info("%s finished: %s", cfg.device_id, stats)
