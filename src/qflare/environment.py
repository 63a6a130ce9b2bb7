"""The process environment, read in one place.

Every part of QFLARE that takes a value from an environment variable asks :func:`environment` for it,
so what the environment can change is listed here and nowhere else:

``QFLARE_ADMIN_TOKEN``
    The operator's bearer token (server and operator CLI).
``QFLARE_SERVER_KEY_PASSPHRASE``
    Encrypts the server's and the operator's key files at rest.
``QFLARE_SIMULATION``
    ``1`` lets a device run a simulation-only poisoning hook (``qflare simulate --attack``).
``QFLARE_SIM_DEVICE_PROFILES``
    Simulation only: the device profiles file ``qflare simulate`` hands to its virtual devices.
``QFLARE_UNSAFE_CRASH_AT``
    Crash tests only: SIGKILL the server at a named step (:mod:`qflare.server.faults`).
``QFLARE_WORKER_SPEC``
    Set by ``qflare server --workers K`` for its worker processes (:mod:`qflare.server.workers`): the
    configuration and the settings each worker needs, as JSON.
Variables named in a configuration
    A key file's passphrase (``identity_key_passphrase_env``, ``--passphrase-env``, ``--password-env``):
    :meth:`Environment.named`.

The snapshot is taken on first use; tests that change the environment call ``environment.cache_clear()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "ADMIN_TOKEN_ENV",
    "SERVER_KEY_PASSPHRASE_ENV",
    "SIMULATION_ENV",
    "SIM_DEVICE_PROFILES_ENV",
    "UNSAFE_CRASH_AT_ENV",
    "WORKER_SPEC_ENV",
    "Environment",
    "environment",
]

ADMIN_TOKEN_ENV = "QFLARE_ADMIN_TOKEN"
SERVER_KEY_PASSPHRASE_ENV = "QFLARE_SERVER_KEY_PASSPHRASE"
SIMULATION_ENV = "QFLARE_SIMULATION"
UNSAFE_CRASH_AT_ENV = "QFLARE_UNSAFE_CRASH_AT"
SIM_DEVICE_PROFILES_ENV = "QFLARE_SIM_DEVICE_PROFILES"
WORKER_SPEC_ENV = "QFLARE_WORKER_SPEC"


@dataclass(frozen=True)
class Environment:
    """A read-only snapshot of the variables QFLARE uses."""

    variables: Mapping[str, str] = field(repr=False)

    @property
    def admin_token(self) -> str | None:
        return self.variables.get(ADMIN_TOKEN_ENV) or None

    @property
    def server_key_passphrase(self) -> str | None:
        return self.variables.get(SERVER_KEY_PASSPHRASE_ENV) or None

    @property
    def simulation(self) -> bool:
        return self.variables.get(SIMULATION_ENV) == "1"

    @property
    def sim_device_profiles(self) -> str | None:
        return self.variables.get(SIM_DEVICE_PROFILES_ENV) or None

    @property
    def unsafe_crash_at(self) -> str:
        return self.variables.get(UNSAFE_CRASH_AT_ENV, "")

    @property
    def worker_spec(self) -> str | None:
        return self.variables.get(WORKER_SPEC_ENV) or None

    def named(self, name: str) -> str | None:
        """The variable a configuration names (a passphrase), or ``None`` if unset or empty."""
        return self.variables.get(name) or None


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The environment as it was when first asked for (read once)."""
    return Environment(dict(os.environ))
