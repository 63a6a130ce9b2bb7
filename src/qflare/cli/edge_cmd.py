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
    log_format: Annotated[str, typer.Option(help="text | json (one object per line, with the device id)")]
    = "text",
) -> None:
    """Poll the server for tasks, train on local data, upload updates, repeat."""
    from qflare.edge.audit import build_auditor
    from qflare.edge.node import EdgeNode, he_context_for, privacy_state_file
    from qflare.edge.setup import build_client, connect
    from qflare.logs import bind_device, configure_logging

    configure_logging(log_level, log_format)
    cfg = load_device_config(config)
    updates = {k: v for k, v in {"device_id": device_id, "server_url": server_url}.items() if v is not None}
    if updates:
        cfg = cfg.model_copy(update=updates)
    bind_device(cfg.device_id)
    with connect(lambda: build_client(cfg, config.parent), cfg) as client:
        auditor = build_auditor(cfg, config.parent, client.http)
        stats = EdgeNode(cfg, client, auditor=auditor, privacy_state=privacy_state_file(cfg, config.parent),
                         he_context=he_context_for(cfg, config.parent)).run(max_rounds=max_rounds)
    logging.getLogger("qflare.edge").info("%s finished: %s", cfg.device_id, stats.summary())

