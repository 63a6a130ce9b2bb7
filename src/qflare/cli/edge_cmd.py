"""``qflare edge``: run one edge node."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qflare.config import DeviceConfig, load_device_config

if TYPE_CHECKING:
    from qflare.edge.client import DeviceClient


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
    with connect(lambda: build_client(cfg, config.parent), cfg) as client:
        auditor = build_auditor(cfg, config.parent, client.http)
        stats = EdgeNode(cfg, client, auditor=auditor).run(max_rounds=max_rounds)
    logging.getLogger("qflare.edge").info("%s finished: %s", cfg.device_id, stats.summary())


def connect(build: Callable[[], DeviceClient], cfg: DeviceConfig, *, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> DeviceClient:
    """Build the client, retrying (with the cause in each line) while the server cannot be reached: an edge
    started before its server waits for it, as the node loop does later."""
    from qflare.edge.client import ServerUnavailable
    from qflare.edge.node import GaveUp

    rc, log = cfg.retry, logging.getLogger("qflare.edge")
    delay, started = rc.initial_seconds, clock()
    while True:
        try:
            return build()
        except ServerUnavailable as exc:
            if rc.give_up_after_seconds is not None and clock() - started > rc.give_up_after_seconds:
                raise GaveUp(f"server unavailable for {clock() - started:.0f} s: {exc.message}",
                             reason=exc.reason) from None
            log.info("%s: server unavailable (%s: %s); retrying in %.1f s", cfg.device_id, exc.reason, exc.message,
                     delay)
            sleep(delay)
            delay = min(delay * 2, rc.max_seconds)
