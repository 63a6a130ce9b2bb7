"""The server's long-lived objects, built once at start-up and reached by routes through ``deps``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from qflare.config import GlobalConfig
from qflare.server.gateway import DeviceGateway
from qflare.server.rounds import Clock, Orchestrator
from qflare.server.storage import Repository


@dataclass
class ServerState:
    config: GlobalConfig
    repo: Repository
    orchestrator: Orchestrator
    gateway: DeviceGateway
    admin_token: str
    clock: Clock = time.time
