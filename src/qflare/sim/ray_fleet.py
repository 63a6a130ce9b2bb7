"""The Ray backend of ``qflare simulate`` (``--backend ray``): fleets of virtual devices hosted in Ray actors.

Each actor is one Ray worker process that runs :func:`qflare.sim.fleet.run_fleet` over its share of the
devices, exactly as a ``python -m qflare.sim.fleet`` process does for the default backend: every device is an
:class:`~qflare.edge.node.EdgeNode` in its own thread with its own config, identity key, KEM encapsulations,
one-time envelopes, HTTP client and data shard, speaking the full protocol over HTTP to the real server. The
actor shares only the interpreter and torch (loaded once per actor). Ray adds the placement (one actor per
CPU of the cluster by default) and, with ``--ray-address``, an existing cluster; nothing goes through Ray's
object store but the device config paths in and each device's ``"ok"`` or failure out.

A local cluster (the default) is started with a bounded object store and as many CPUs as this machine
has; it is shut down when the run ends. An existing cluster's nodes must reach the server's URL and read the
run directory (the same machine, or a shared filesystem): the devices' configs and keys are files there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qflare.errors import ConfigError

__all__ = ["OBJECT_STORE_BYTES", "RayCluster", "RayFleet", "check_ray_address", "import_ray", "ray_cluster"]

log = logging.getLogger("qflare.sim.ray_fleet")

OBJECT_STORE_BYTES = 128 * 2**20
"""The local cluster's object store (Ray's minimum is 75 MiB): only config paths and results pass through it,
so it stays small instead of Ray's default of 30% of the machine's memory."""

_NOT_INSTALLED = "--backend ray: Ray is not installed; install the extra: pip install 'qflare[ray]' (or -e '.[ray]')"


def import_ray() -> Any:
    """The ``ray`` module, or one :class:`ConfigError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(_NOT_INSTALLED, reason="ray_not_installed") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT or "
                          "auto", reason="bad_option")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, *, timeout: float = 5.0) -> None:
    """Refuse an unreachable ``--ray-address`` with one line naming it, before anything starts (``ray.init``
    would retry for a minute and then raise with a traceback)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"--ray-address {address}: cannot reach a Ray cluster there ({why})",
                          reason="ray_unreachable") from None


@dataclass
class RayCluster:
    """The Ray cluster a run uses: its CPUs, and whether this run started it (and so shuts it down)."""

    ray: Any
    address: str | None
    cpus: int
    started_here: bool

    def actors_for(self, clients: int, devices_per_actor: int | None) -> int:
        """One actor per CPU of the cluster by default (each trains one device at a time), else as asked."""
        if devices_per_actor is not None:
            return math.ceil(clients / max(1, devices_per_actor))
        return max(1, min(clients, self.cpus))


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None,
                object_store_bytes: int = OBJECT_STORE_BYTES) -> Iterator[RayCluster]:
    """Connect to the cluster at ``address``, or start a local one (``num_cpus``: this machine's by default,
    object store ``object_store_bytes``, no dashboard); disconnect (a local one: stop it) on exit.

    If this process is already connected (``qflare simulate`` connects before its banner, so that a bad address
    is one line before anything starts), that connection is used and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield _cluster(ray, address, started_here=False)
        return
    if address is not None:
        check_ray_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if address is None:
        # No usage report sent home from a simulation; and the actors at the niceness of the server and enclave
        # (Ray starts workers at nice 15: on a busy machine the devices starved behind everything else).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray's memory monitor kills workers when the whole machine passes 95%, whoever holds the memory: on a
        # shared machine it killed both fleets (1.7 GiB of 23) when other processes filled it. The kernel decides.
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=object_store_bytes,
                      _node_ip_address="127.0.0.1")
    try:
        # Ray's C++ client writes a warning a second to fd 2 while it retries a GCS that does not answer.
        with _stderr_to_file() as noise:
            ray.init(address=address, **kwargs)
        noise.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        where = f"--ray-address {address}" if address else "--backend ray: starting a local Ray cluster"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{where}: {first}{_last_line(noise)}", reason="ray_unreachable") from None
    try:
        yield _cluster(ray, address, started_here=True)
    finally:
        ray.shutdown()


def _cluster(ray: Any, address: str | None, *, started_here: bool) -> RayCluster:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return RayCluster(ray=ray, address=address, cpus=max(1, cpus), started_here=started_here)


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[Path]:
    """File descriptor 2 (C++ code's stderr too) into a temporary file while the block runs."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="qflare-ray-", suffix=".log", delete=False) as f:
        path = Path(f.name)
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            yield path
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _last_line(path: Path) -> str:
    """Ray's last complaint, if any (e.g. what the GCS answered), as ``" (...)"``; the file is removed."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        path.unlink()
    except OSError:
        return ""
    return f" (last: {lines[-1].split('] ', 1)[-1][:200]})" if lines else ""


class FleetActor:
    """A Ray actor hosting one fleet of virtual devices (:func:`qflare.sim.fleet.run_fleet`)."""

    def __init__(self, env: dict[str, str]) -> None:
        # An edge authenticates with its own key only: never the operator's token, whatever the worker inherited.
        os.environ.pop("QFLARE_ADMIN_TOKEN", None)
        os.environ.update(env)

    def pid(self) -> int:
        return os.getpid()

    def run(self, configs: list[str], log_dir: str, fleet_log: str, train_slots: int = 1,
            max_rounds: int | None = None) -> dict[str, str]:
        """Every device of ``configs`` until done: ``device_id -> "ok"`` or its failure."""
        from qflare.sim.fleet import LOG_FORMAT, log_per_device, run_fleet

        root = logging.getLogger()
        root.setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        handlers = log_per_device([Path(c) for c in configs], Path(log_dir))
        whole = logging.FileHandler(fleet_log)
        whole.setFormatter(logging.Formatter("%(asctime)s %(threadName)s " + LOG_FORMAT[12:]))
        root.addHandler(whole)
        log.info("%d virtual devices in Ray actor pid %d", len(configs), os.getpid())
        try:
            results = run_fleet([Path(c) for c in configs], train_slots=train_slots, max_rounds=max_rounds)
            for device, outcome in sorted(results.items()):
                if outcome != "ok":
                    log.error("%s: %s", device, outcome)
            return results
        finally:
            for h in [*handlers, whole]:
                root.removeHandler(h)
                h.close()


@dataclass
class RayFleet:
    """A fleet actor and its running ``run`` call, polled like an edge process: :meth:`poll` is None while it
    runs, then 0 if every device finished ``"ok"`` and 1 otherwise (:attr:`failures` says which, and why)."""

    ray: Any
    actor: Any
    ref: Any
    devices: int
    returncode: int | None = None
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, cluster: RayCluster, *, name: str, configs: Sequence[Path], log_dir: Path, env: dict[str, str],
              num_cpus: float, train_slots: int = 1) -> RayFleet:
        ray = cluster.ray
        actor_cls = ray.remote(FleetActor).options(num_cpus=num_cpus, max_restarts=0, name=None)
        actor = actor_cls.remote(env)
        ref = actor.run.remote([str(c) for c in configs], str(log_dir), str(log_dir / f"{name}.log"), train_slots)
        return cls(ray=ray, actor=actor, ref=ref, devices=len(configs))

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            results: dict[str, str] = self.ray.get(self.ref)
        except Exception as exc:  # noqa: BLE001 - the actor died (killed, out of memory) or run() raised
            self.failures = {"actor": (str(exc).strip().splitlines() or [type(exc).__name__])[0]}
        else:
            self.failures = {d: r for d, r in results.items() if r != "ok"}
            if len(results) < self.devices:
                self.failures["actor"] = f"{self.devices - len(results)} device(s) gave no result"
        self.returncode = 1 if self.failures else 0
        return self.returncode

    def stop(self) -> None:
        """End the actor (its devices are daemon threads of its process)."""
        if self.ray.is_initialized():
            with contextlib.suppress(Exception):
                self.ray.kill(self.actor, no_restart=True)
