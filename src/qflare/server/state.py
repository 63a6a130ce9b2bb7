"""The server's long-lived objects, built once at start-up and reached by routes through ``deps``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qflare.config import GlobalConfig
from qflare.server.gateway import DeviceGateway
from qflare.server.rounds import Clock, Orchestrator
from qflare.server.storage import Repository

if TYPE_CHECKING:
    from qflare.enclave.backend import EnclaveAggregator
    from qflare.server.enclave_service import RemoteEnclaveAggregator
    from qflare.server.ledger import AuditLog


@dataclass
class ServerState:
    config: GlobalConfig
    repo: Repository
    orchestrator: Orchestrator
    gateway: DeviceGateway
    admin_token: str
    clock: Clock = time.time
    enclave: EnclaveAggregator | RemoteEnclaveAggregator | None = None
    ledger: AuditLog | None = None

    def close(self) -> None:
        """Release what the state holds: the enclave process, the round lease and the database pool."""
        if self.enclave is not None:
            self.enclave.close()
        self.orchestrator.lease.release()
        self.repo.close()
