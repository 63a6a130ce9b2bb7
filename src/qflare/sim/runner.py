"""Run a whole federation on this machine: one server process and N edge-node processes over real HTTP.

Each participant is a separate ``python -m qflare`` process, speaking the same protocol as a deployed
fleet; the only difference from production is that all of them listen on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from qflare.config import (
    AggregationConfig,
    AttestationConfig,
    CsvLayoutConfig,
    DataConfig,
    DeviceConfig,
    DeviceLedgerConfig,
    EnclaveHostConfig,
    EvaluationConfig,
    GlobalConfig,
    HEConfig,
    LedgerConfig,
    PersonalizeConfig,
    PrivacyConfig,
    QKDConfig,
    RoundsConfig,
    ServerConfig,
    SimulationAttackConfig,
    TrainConfig,
    dump_yaml,
)
from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.keyfile import UnencryptedKeyWarning, read_public_key, serialize_public_key, write_private_key
from qflare.crypto.secret_access import TOKEN
from qflare.errors import ConfigError, QFlareError
from qflare.fl.tasks import get_task
from qflare.qkd.pki import DemoPKI, create_demo_pki
from qflare.sim.attacks import ATTACKS, AttackCampaign, RecordingProxy
from qflare.sim.net import free_port
from qflare.sim.report import metric_label, write_metrics_csv, write_plot, write_summary

if TYPE_CHECKING:
    from qflare.sim.ray_fleet import RayCluster, RayFleet


class SimulationError(QFlareError):
    default_reason = "simulation_failed"


@dataclass(frozen=True)
class SimulationConfig:
    """What ``qflare simulate`` runs."""

    task: str = "digits"
    clients: int = 10
    rounds: int = 20
    partition: str | None = None  # None: the task's natural split
    alpha: float = 0.5
    seed: int = 0
    fraction: float = 1.0
    min_quorum: int | None = None
    deadline_seconds: float = 120.0
    train: TrainConfig | None = None
    runs_dir: Path = Path("runs")
    timeout_seconds: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)
    attackers: tuple[str, ...] = ()
    key_source: str = "mlkem"
    enclave: str = "simulated"  # none | simulated
    aggregator: str = "bounded-fedavg"  # aggregation.rule (qflare.fl.strategies.STRATEGIES)
    aggregator_params: dict[str, float | int | None] = field(default_factory=dict)  # aggregation.params
    attack: str | None = None  # model poisoning by enrolled devices (qflare.fl.poisoning.POISONING_KINDS)
    attack_params: dict[str, Any] = field(default_factory=dict)
    malicious_fraction: float = 0.0
    ledger: bool = True  # the audit ledger (off only to measure its cost: qflare bench ledger)
    # Virtual devices per edge process (qflare.sim.fleet); 1: one process per device; None: auto.
    devices_per_process: int | None = None
    csv_path: Path | None = None  # traffic/pollution: the user's CSV instead of the generated city
    csv_layout: dict[str, Any] = field(default_factory=dict)  # config.CsvLayoutConfig keys
    privacy: dict[str, Any] = field(default_factory=dict)  # aggregation.privacy (config.PrivacyConfig keys)
    long_poll_seconds: float = 10.0  # DeviceConfig.long_poll_seconds (0: plain polling every 0.5 s)
    he: str = "none"  # ckks: devices encrypt, the server sums ciphertexts (aggregation.he; enclave none, fedavg)
    mode: str = "sync"  # rounds.mode; async: FedBuff over HTTP, `rounds` published versions of `buffer` updates
    buffer: int = 10  # rounds.buffer
    max_staleness: int = 10  # rounds.max_staleness
    staleness_exponent: float = 0.5  # rounds.staleness_exponent
    selector: str = "uniform"  # rounds.selector
    target: float | None = None  # report time_to_target_seconds (accuracy reached, or an error at most this)
    personalize: str | None = None  # finetune | fedper | ditto: devices personalise and report their held-out metric
    personalize_epochs: int | None = None  # finetune: local epochs of fine-tuning (None: the task's)
    # process: edge processes (qflare.sim.fleet) on this machine; ray: the same fleets in Ray actors
    # (qflare.sim.ray_fleet), on a local cluster or the one at ray_address.
    backend: str = "process"
    ray_address: str | None = None


def edge_processes(clients: int, devices_per_process: int | None) -> int:
    """How many edge processes host ``clients`` devices: auto is 2 up to 100 devices, one per 50 above."""
    if devices_per_process is not None:
        return math.ceil(clients / max(1, devices_per_process))
    return min(clients, max(2, math.ceil(clients / 50)))


def active_window(clients: int) -> float:
    """The simulation server's ``rounds.active_window_seconds``: 30 s (the default), longer above 300 devices.

    A round opens when every device was seen within the window. One machine's server serves each device's
    requests in turn, so the time between two requests of one device grows with the count (1000 devices on
    2 busy cores: about 44 s), and a 30 s window never held all of them at once."""
    return max(30.0, clients / 10)


def default_deadline(clients: int) -> float:
    """``qflare simulate``'s round deadline unless ``--deadline``: 120 s, 0.6 s a device above 200 devices (one
    server takes the updates one at a time: 1000 devices on 2 busy cores got through about 2 a second)."""
    return max(120.0, 0.6 * clients)


def default_long_poll(clients: int) -> float:
    """``qflare simulate``'s task-poll hold unless ``--long-poll``: 10 s, 30 s (the most) above 300 devices. A held
    poll costs nothing; each return costs the server a sealed exchange, which 1000 devices' returns every 10 s
    made most of its work between updates."""
    return 10.0 if clients <= 300 else 30.0


def new_run_dir(base: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise SimulationError(f"cannot create a run directory under {base}")


def spawn_qflare(
    args: list[str], log_path: Path, env: dict[str, str], *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m qflare ARGS`` as its own process group, output to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "qflare", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
        )


def edge_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the operator's secrets: an edge process authenticates with its own key only."""
    return {k: v for k, v in env.items() if k != "QFLARE_ADMIN_TOKEN"}


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"server exited with code {proc.returncode} before becoming healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SimulationError(f"server not healthy after {timeout:.0f} s")


@dataclass
class Federation:
    """A running server (and its operator API) plus the edge processes started against it."""

    run_dir: Path
    url: str
    admin_token: str
    server: subprocess.Popen[bytes]
    env: dict[str, str]
    edges: dict[str, subprocess.Popen[bytes] | RayFleet] = field(default_factory=dict)
    attestation: AttestationConfig | None = None
    ledger: bool = True  # the server keeps an audit ledger: devices audit it
    _status_client: httpx.Client | None = field(default=None, repr=False)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)

    def _session(self) -> httpx.Client:
        # One client for every poll and enrollment: a new httpx.Client loads the CA bundle into an SSL context
        # (0.13 s on this busy machine), about two minutes of enrolling 1000 devices one client each.
        if self._status_client is None:
            self._status_client = self.admin()
        return self._status_client

    def status(self) -> dict[str, Any]:
        r = self._session().get("/v1/admin/status")
        r.raise_for_status()
        return dict(r.json())

    @property
    def device_dir(self) -> Path:
        d = self.run_dir / "devices"
        d.mkdir(exist_ok=True)
        return d

    def server_key_file(self) -> Path:
        """Fetch the server's KEM public key once and keep it as the devices' pinned key."""
        path = self.device_dir / "server-kem.pub"
        if not path.exists():
            r = httpx.get(f"{self.url}/v1/server/keys", timeout=30)
            r.raise_for_status()
            path.write_text(r.json()["kem_public_key"])
        return path

    def enroll(self, device_id: str, *, key_source: str = "mlkem") -> SigningKey:
        """Create a device identity (as the device would) and enroll its public key (as the operator would)."""
        key = SigningKey.generate()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnencryptedKeyWarning)  # a simulation's keys live in its run dir
            write_private_key(self.device_dir / f"{device_id}.key", key, token=TOKEN, passphrase=None)
        pub = serialize_public_key(key.public_key()).decode()
        r = self._session().post("/v1/admin/devices",
                                 json={"device_id": device_id, "public_key": pub, "key_source": key_source})
        if r.status_code != 201:
            raise SimulationError(f"enrolling {device_id} failed: {r.status_code} {r.text[:200]}")
        return key

    def device_config(self, device_id: str, data: DataConfig, **extra: Any) -> DeviceConfig:
        # With the enclave the devices trust its attested quote (which binds its keys); without, the key pin.
        pin = None if self.attestation is not None else self.server_key_file().name
        # With a ledger the devices audit it (docs/ledger.md, "Devices as auditors"), pinning its key.
        # The server writes that key at start (server-keys/ledger-log.pub): the enclave's signing key when
        # the enclave signs the checkpoints, else a copy of server-sign.pub.
        log_key = self.run_dir / "server-keys" / "ledger-log.pub"
        if self.ledger and "ledger" not in extra and log_key.exists():
            extra["ledger"] = DeviceLedgerConfig(log_key_file=str(log_key.resolve()))
        return DeviceConfig(
            device_id=device_id, server_url=self.url, identity_key_file=f"{device_id}.key",
            server_public_key_file=pin, data=data, poll_interval_seconds=0.5,
            attestation=self.attestation, **extra,
        )

    def start_edge(self, device: DeviceConfig) -> None:
        path = self.device_dir / f"{device.device_id}.yaml"
        dump_yaml(device, path)
        self.edges[device.device_id] = spawn_qflare(
            ["edge", "--config", str(path), "--log-level", "info"],
            self.run_dir / "logs" / f"{device.device_id}.log", edge_env(self.env),
        )

    def start_fleet(self, name: str, devices: list[DeviceConfig], *, train_slots: int = 1) -> None:
        """One process hosting ``devices`` as virtual devices (:mod:`qflare.sim.fleet`), each its own config."""
        paths = []
        for device in devices:
            path = self.device_dir / f"{device.device_id}.yaml"
            dump_yaml(device, path)
            paths.append(str(path))
        with (self.run_dir / "logs" / f"{name}.log").open("wb") as log:
            self.edges[name] = subprocess.Popen(
                [sys.executable, "-m", "qflare.sim.fleet", "--train-slots", str(train_slots),
                 "--log-dir", str(self.run_dir / "logs"), *paths],
                stdout=log, stderr=subprocess.STDOUT, env=edge_env(self.env), start_new_session=True,
            )

    def start_ray_fleet(self, cluster: RayCluster, name: str, devices: list[DeviceConfig], *, num_cpus: float,
                        train_slots: int = 1) -> None:
        """One Ray actor hosting ``devices`` as virtual devices (:mod:`qflare.sim.ray_fleet`), each its own config."""
        from qflare.sim.ray_fleet import RayFleet

        paths = []
        for device in devices:
            path = self.device_dir / f"{device.device_id}.yaml"
            dump_yaml(device, path)
            paths.append(path)
        # What the runner added to the edges' environment (the local cluster's workers inherit the rest).
        env = {k: v for k, v in edge_env(self.env).items() if os.environ.get(k) != v}
        self.edges[name] = RayFleet.start(cluster, name=name, configs=paths, log_dir=self.run_dir / "logs", env=env,
                                          num_cpus=num_cpus, train_slots=train_slots)

    def save_metrics(self) -> None:
        """The server's Prometheus metrics (requests by route, enclave calls) into ``server-metrics.txt``
        of the run directory, best effort: what ``docs/benchmarks.md`` counts requests per device-round from."""
        if getattr(self.server, "poll", None) is None or self.server.poll() is not None:
            return  # no server process (tests) or it is gone
        try:
            r = self._session().get("/metrics")
            if r.status_code == 200:
                (self.run_dir / "server-metrics.txt").write_text(r.text)
        except (httpx.HTTPError, OSError) as exc:
            print(f"server metrics not saved: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self.save_metrics()
        if self._status_client is not None:
            self._status_client.close()
            self._status_client = None
        for proc in self.edges.values():
            if isinstance(proc, subprocess.Popen):
                stop_process(proc, grace=5)
            else:
                proc.stop()
        stop_process(self.server)


@contextlib.contextmanager
def start_server(
    config: GlobalConfig, run_dir: Path, *, extra_env: dict[str, str] | None = None,
    server_args: Sequence[str] = (),
) -> Iterator[Federation]:
    """Start ``qflare server`` for ``config`` in ``run_dir`` (``server_args``: more options, e.g. ``--workers``);
    stop it (and any edges) on exit."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    env = {**os.environ, "QFLARE_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           **(extra_env or {})}
    cfg_path = run_dir / "global_config.yaml"
    dump_yaml(config, cfg_path)
    url = f"http://{config.server.host}:{config.server.port}"
    proc = spawn_qflare(["server", "--config", str(cfg_path), "--log-level", "info", "--no-run-artefacts",
                         *server_args],
                        run_dir / "logs" / "server.log", env)  # the run's artefacts: written by simulate itself
    fed = Federation(run_dir=run_dir, url=url, admin_token=token, server=proc, env=env,
                     ledger=config.ledger.enabled)
    try:
        wait_healthy(url, proc)
        if config.enclave.backend == "simulated":
            fed.attestation = expected_enclave(config)
        yield fed
    finally:
        fed.stop()


def prepare_enclave_signer(config: GlobalConfig) -> None:
    """As the enclave's signing authority, create the key that signs its SIGSTRUCT (before launch)."""
    from qflare.enclave.launcher import load_or_create_signing_key

    Path(config.enclave.work_dir).mkdir(parents=True, exist_ok=True)
    load_or_create_signing_key(Path(config.enclave.work_dir) / "signer-dev-key.json")


def expected_enclave(config: GlobalConfig) -> AttestationConfig:
    """What the devices pin, computed independently of the running server: the measurement of this
    source tree with the enclave config the server derives, the signer's key, the platform's root."""
    from qflare.enclave.launcher import load_or_create_signing_key
    from qflare.enclave.measurement import measure, signer_id
    from qflare.enclave.trusted.platform import TRUST_ROOT_FILE
    from qflare.server.app import enclave_config_for

    work = Path(config.enclave.work_dir)
    signer = load_or_create_signing_key(work / "signer-dev-key.json").public_key().to_bytes()
    return AttestationConfig(
        expected_measurement=measure(enclave_config_for(config)).hex,
        expected_signer=signer_id(signer).hex(),
        trust_root_file=str((work / "platform" / TRUST_ROOT_FILE).resolve()),
        allow_simulated=True,  # a simulation: the quote says so in a signed field
    )


def build_global_config(sim: SimulationConfig, run_dir: Path, port: int) -> GlobalConfig:
    task = get_task(sim.task)
    train = sim.train or task.default_train_config()
    quorum = sim.min_quorum or max(1, math.ceil(0.5 * sim.clients))
    return GlobalConfig(
        task=sim.task,  # type: ignore[arg-type]
        seed=sim.seed,
        server=ServerConfig(
            host="127.0.0.1", port=port, db_url=f"sqlite:///{(run_dir / 'qflare.db').resolve()}",
            key_dir=str((run_dir / "server-keys").resolve()),
        ),
        rounds=RoundsConfig(
            # The revoked attacker is one more enrolled device, and a revoked device lowers what a round waits
            # for (rounds.py _devices_needed): without it, round 1 opens before the last honest edge enrolls.
            total=sim.rounds, fraction=sim.fraction, min_devices=sim.clients + ("revoked" in sim.attackers),
            min_quorum=min(quorum, sim.clients, sim.buffer if sim.mode == "async" else sim.clients),
            deadline_seconds=sim.deadline_seconds, seed=sim.seed, mode=sim.mode,  # type: ignore[arg-type]
            buffer=sim.buffer, max_staleness=sim.max_staleness, staleness_exponent=sim.staleness_exponent,
            selector=sim.selector,  # type: ignore[arg-type]
            active_window_seconds=active_window(sim.clients),
        ),
        training=train,
        enclave=EnclaveHostConfig(backend=sim.enclave, work_dir=str((run_dir / "enclave").resolve())),  # type: ignore[arg-type]
        aggregation=AggregationConfig(rule=sim.aggregator, params=dict(sim.aggregator_params),
                                      privacy=PrivacyConfig(**sim.privacy),
                                      he=HEConfig(scheme="ckks",
                                                  public_context_file=str(he_files(run_dir)[1].resolve()))
                                      if sim.he == "ckks" else HEConfig()),
        ledger=LedgerConfig(enabled=sim.ledger),
        # CKKS: the server cannot evaluate the encrypted model; the operator's side does (decrypt_and_evaluate).
        evaluation=EvaluationConfig(enabled=sim.he != "ckks",
                                    csv_path=str(sim.csv_path.resolve()) if sim.csv_path else None,
                                    csv=CsvLayoutConfig(**sim.csv_layout)),
    )


def he_files(run_dir: Path) -> tuple[Path, Path]:
    """Where a CKKS run keeps the operator's contexts: the secret one (devices) and the public one (server)."""
    return run_dir / "he" / "ckks-secret.ctx", run_dir / "he" / "ckks-public.ctx"


def decrypt_and_evaluate(fed: Federation, sim: SimulationConfig, rounds: list[dict[str, Any]]) -> None:
    """CKKS: evaluate each round's published (encrypted) model as a device would, decrypting it with the
    devices' secret context; the figures go into the rounds' metrics (marked ``evaluated_by``)."""
    from qflare.fl.he import decrypt_aggregate, load_secret_context
    from qflare.fl.serialize import ModelSpec, dump_arrays
    from qflare.server.evaluation import Evaluator

    ctx = load_secret_context(he_files(fed.run_dir)[0])
    task = get_task(sim.task)
    spec = ModelSpec.from_model(task.build_model())
    evaluator = Evaluator(sim.task, seed=sim.seed)
    with fed.admin() as c:
        for rnd in rounds:
            if rnd["status"] != "aggregated" or rnd.get("new_version") is None:
                continue
            r = c.get(f"/v1/admin/models/{rnd['new_version']}/safetensors")
            r.raise_for_status()
            plain = dump_arrays(decrypt_aggregate(ctx, r.content, spec), {"round_id": str(rnd["round_id"])})
            rnd["metrics"] = {**(rnd.get("metrics") or {}), **evaluator.evaluate(plain),
                              "evaluated_by": "operator, decrypted (the server cannot)"}


_COST_LINE = re.compile(r": round (\d+) costs (\{.*\})\s*$")


def wire_costs(run_dir: Path, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the devices' cost lines, one per device and round (bytes of the HTTP bodies both ways,
    encode/decode and train times; the download and decode ones over rounds after the first, whose base is
    a published aggregate, not the plaintext initial model) and the server's times per round (validate +
    add, aggregate) from the rounds' metrics."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for log in sorted((run_dir / "logs").glob("*.log")):  # a fleet's log and its devices' logs repeat lines
        for line in log.read_text(errors="replace").splitlines():
            m = _COST_LINE.search(line)
            if m:
                with contextlib.suppress(ValueError):
                    cost = json.loads(m.group(2))
                    found[(str(cost.get("device_id")), int(m.group(1)))] = cost
    lines = list(found.values())
    done = [r for r in rounds if r["status"] == "aggregated" and r.get("metrics")]
    if not lines or not done:
        return {}

    def mean(key: str) -> float:
        later = key.startswith(("download", "decode"))
        vals = [float(x[key]) for x in lines
                if isinstance(x.get(key), int | float) and (not later or int(x.get("model_version", 0)) > 0)]
        return sum(vals) / len(vals) if vals else math.nan

    def server_mean(key: str) -> float:
        vals = [float(r["metrics"][key]) for r in done if isinstance(r["metrics"].get(key), int | float)]
        return sum(vals) / len(vals) if vals else math.nan

    # What the devices measured of the last model they downloaded (decrypted under CKKS), on their own data.
    last = max(int(x.get("model_version", 0)) for x in lines)
    local = [float(v) for x in lines if int(x.get("model_version", 0)) == last
             for k, v in x.items() if k.startswith("global_") and k.endswith("_local")]
    return {
        "devices_evaluated_model_version": last,
        "devices_local_metric_mean": sum(local) / len(local) if local else math.nan,
        "device_trainings": len(lines),
        "device_upload_bytes": mean("upload_bytes_sent"),  # the update's envelope
        "device_upload_answer_bytes": mean("upload_bytes_received"),
        "device_download_bytes": mean("download_bytes_received"),  # the sealed global model
        "device_download_request_bytes": mean("download_bytes_sent"),
        "device_update_payload_bytes": mean("update_bytes"),
        "device_encode_seconds": mean("encode_seconds"),  # encrypt (CKKS) or serialize (plaintext)
        "device_decode_seconds": mean("decode_seconds"),  # decrypt (CKKS) or parse (plaintext)
        "device_train_seconds": mean("train_seconds"),
        "device_download_seconds": mean("download_seconds"),
        "device_upload_seconds": mean("upload_seconds"),
        "server_update_seconds_per_round": server_mean("update_seconds"),  # validate + add, all updates
        "server_aggregate_seconds_per_round": server_mean("aggregation_seconds"),
        "round_seconds": server_mean("round_seconds"),
    }


ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class KMEPair:
    """A simulated pair of ETSI GS QKD 014 KMEs: devices use KME A (master), the server KME B (slave)."""

    pki: DemoPKI
    kme_a: str
    kme_b: str

    def server_config(self) -> QKDConfig:
        return QKDConfig(kme_url=self.kme_b, cert=str(self.pki.cert("server")), key=str(self.pki.key("server")),
                         ca=str(self.pki.ca))

    def device_config(self, device_id: str) -> QKDConfig:
        return QKDConfig(kme_url=self.kme_a, cert=str(self.pki.cert(device_id)), key=str(self.pki.key(device_id)),
                         ca=str(self.pki.ca), peer_sae_id="server")


@contextlib.contextmanager
def start_kme_pair(run_dir: Path, device_ids: list[str], *, env: dict[str, str]) -> Iterator[KMEPair]:
    """Start ``qflare qkd kme serve`` (BB84-fed key pool, mutual TLS) for these devices and the server."""
    pki = create_demo_pki(run_dir / "kme", sae_ids=[*device_ids, "server"])
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = run_dir / "logs" / "kme.log"
    args = ["qkd", "kme", "serve", "--port", "0", "--cert", str(pki.cert("kme-a")), "--key", str(pki.key("kme-a")),
            "--cert-b", str(pki.cert("kme-b")), "--key-b", str(pki.key("kme-b")), "--ca", str(pki.ca),
            "--sae-b", "server", "--seed", "0"]
    for d in device_ids:
        args += ["--sae-a", d]
    proc = spawn_qflare(args, log, env)
    try:
        deadline = time.monotonic() + 120
        while True:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and "kme_a" in line:
                    urls = json.loads(line)
                    yield KMEPair(pki=pki, kme_a=urls["kme_a"], kme_b=urls["kme_b"])
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SimulationError(f"the KME pair did not start; see {log}")
            time.sleep(0.2)
    finally:
        stop_process(proc)


def check_partition(sim: SimulationConfig) -> None:
    """Split the data as every edge will, before anything starts: ``ConfigError`` (``invalid_partition``)
    naming the sample and client counts if the data cannot serve ``sim.clients`` clients."""
    csv = CsvLayoutConfig(**sim.csv_layout).source(str(sim.csv_path.resolve())) if sim.csv_path else None
    try:  # on the user's CSV when there is one: its sensor columns are what the edges split
        get_task(sim.task).client_dataset(0, sim.clients, partition=sim.partition, alpha=sim.alpha, seed=sim.seed,
                                          csv_path=csv)
    except ConfigError as exc:
        where = f" of {sim.csv_path}" if sim.csv_path else ""
        raise ConfigError(f"--clients {sim.clients} --partition {sim.partition}: the data{where} cannot be split so: "
                          f"{exc.message}", reason=exc.reason) from None


def run_simulation(sim: SimulationConfig, *, on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run a federation to completion and write its artefacts; returns the summary."""
    started = time.monotonic()
    if sim.partition is None:
        sim = dataclasses.replace(sim, partition=get_task(sim.task).partitions[0])
    check_partition(sim)
    run_dir = new_run_dir(sim.runs_dir)
    if sim.he == "ckks":
        # The operator's step (qflare he init): the secret context for the devices, the public one for the server.
        from qflare.fl.he import make_context, write_context_files

        write_context_files(make_context(), *he_files(run_dir))
    config = build_global_config(sim, run_dir, free_port())
    if config.enclave.backend != "none":
        prepare_enclave_signer(config)
    device_ids = [f"edge_{i + 1:02d}" for i in range(sim.clients)]
    if sim.key_source == "mlkem":
        return _run(sim, run_dir, config, device_ids, None, on_progress, started)
    with start_kme_pair(run_dir, device_ids, env={**os.environ, **sim.extra_env}) as kme:
        config = config.model_copy(update={"qkd": kme.server_config()})
        return _run(sim, run_dir, config, device_ids, kme, on_progress, started)


def _run(
    sim: SimulationConfig, run_dir: Path, config: GlobalConfig, device_ids: list[str], kme: KMEPair | None,
    on_progress: ProgressFn | None, started: float,
) -> dict[str, Any]:
    task = get_task(sim.task)
    attacks: dict[str, Any] | None = None
    malicious = _malicious_devices(sim, device_ids)
    # DANGER flag for the edge processes: lets the chosen devices apply their simulation_attack.
    extra_env = {**sim.extra_env, "QFLARE_SIMULATION": "1"} if malicious else sim.extra_env
    with contextlib.ExitStack() as outer:
        # Ray first: its cluster outlives the server and the actors (Federation.stop ends them, then Ray stops).
        cluster = outer.enter_context(_ray_cluster(sim)) if sim.backend == "ray" else None
        fed = outer.enter_context(start_server(config, run_dir, extra_env=extra_env))
        campaign = _prepare_attacks(fed, sim, outer) if sim.attackers else None
        devices: list[DeviceConfig] = []
        for i, device_id in enumerate(device_ids):
            data = DataConfig(
                task=sim.task,  # type: ignore[arg-type]
                partition=sim.partition,  # type: ignore[arg-type]
                alpha=sim.alpha, num_partitions=sim.clients, partition_index=i, seed=sim.seed,
                csv_path=str(sim.csv_path.resolve()) if sim.csv_path else None, csv=CsvLayoutConfig(**sim.csv_layout),
            )
            fed.enroll(device_id, key_source=sim.key_source)
            url = campaign.proxy.url if campaign is not None and campaign.proxy is not None and i == 0 else fed.url
            extra: dict[str, Any] = (
                {"key_source": sim.key_source, "qkd": kme.device_config(device_id)} if kme is not None else {}
            )
            if device_id in malicious:
                extra["simulation_attack"] = malicious[device_id]
            extra["long_poll_seconds"] = sim.long_poll_seconds
            extra["cost_log"] = True
            if sim.he == "ckks":
                extra["he_context_file"] = str(he_files(run_dir)[0].resolve())
            if sim.personalize is not None:
                extra["personalize"] = PersonalizeConfig(method=sim.personalize,  # type: ignore[arg-type]
                                                         epochs=sim.personalize_epochs)
            devices.append(fed.device_config(device_id, data, **extra).model_copy(update={"server_url": url}))
        start_edges(fed, devices, sim, cluster)
        if campaign is not None:
            campaign.start()
        status = _wait_finished(fed, sim, on_progress)
        if campaign is not None:
            attacks = campaign.stop()
            status = fed.status()
        personal = _wait_personalized(fed, sim) if sim.personalize is not None else None
        with fed.admin() as c:
            rounds = c.get("/v1/admin/rounds").json()
        if sim.he == "ckks":
            decrypt_and_evaluate(fed, sim, rounds)
    wall = time.monotonic() - started
    summary = _finish(sim, run_dir, task.metric, rounds, status, wall, attacks)
    costs = wire_costs(run_dir, rounds)
    added: dict[str, Any] = {}
    if costs or sim.he != "none":
        added.update(costs=costs, he=sim.he)
    if personal is not None:
        added.update({k: v for k, v in personal.items() if k != "metric"}, personalize=sim.personalize)
    if malicious:
        added["poisoning"] = {"attack": sim.attack, "params": dict(sim.attack_params),
                              "malicious_fraction": sim.malicious_fraction, "malicious": sorted(malicious)}
    if added:  # summary.json holds exactly what the run returns
        summary.update(added)
        write_summary(summary, run_dir / "summary.json")
    return summary


def start_edges(fed: Federation, devices: list[DeviceConfig], sim: SimulationConfig, cluster: RayCluster | None
                ) -> None:
    """Start the devices: in Ray actors (``cluster``), else in edge processes (one per device, or fleets)."""
    if cluster is not None:
        n_actors = cluster.actors_for(len(devices), sim.devices_per_process)
        for k in range(n_actors):  # fractional CPUs when asked for more actors than the cluster has CPUs
            fed.start_ray_fleet(cluster, f"fleet_{k + 1:02d}", devices[k::n_actors],
                                num_cpus=min(1.0, cluster.cpus / n_actors))
        return
    n_proc = edge_processes(len(devices), sim.devices_per_process)
    if n_proc >= len(devices):
        for device in devices:
            fed.start_edge(device)
    else:
        for k in range(n_proc):
            fed.start_fleet(f"fleet_{k + 1:02d}", devices[k::n_proc])


@contextlib.contextmanager
def _ray_cluster(sim: SimulationConfig) -> Iterator[RayCluster]:
    from qflare.sim.ray_fleet import ray_cluster

    with ray_cluster(sim.ray_address) as cluster:
        yield cluster


def _malicious_devices(sim: SimulationConfig, device_ids: list[str]) -> dict[str, SimulationAttackConfig]:
    """The devices ``--attack`` turns malicious (chosen from the seed) and the attack each one runs."""
    if sim.attack is None or sim.malicious_fraction <= 0:
        return {}
    from qflare.fl.poisoning import Poisoner, choose_malicious

    chosen = choose_malicious(device_ids, sim.malicious_fraction, sim.seed)
    params = dict(sim.attack_params)
    if sim.attack == "alie":
        params.setdefault("n", len(device_ids))
        params.setdefault("f", max(1, len(chosen)))
    Poisoner(sim.attack, params, num_classes=getattr(get_task(sim.task), "num_classes", None))  # fail early
    return {d: SimulationAttackConfig(kind=sim.attack, params=params) for d in chosen}


def _prepare_attacks(fed: Federation, sim: SimulationConfig, stack: contextlib.ExitStack) -> AttackCampaign:
    """Set up the adversaries: a recording proxy for edge_01, and a device that gets revoked."""
    unknown = sorted(set(sim.attackers) - set(ATTACKS))
    if unknown:
        raise SimulationError(f"unknown attackers {unknown}; choose from {', '.join(ATTACKS)}", reason="bad_attackers")
    proxy = None
    if {"replay", "tamper"} & set(sim.attackers):
        proxy = RecordingProxy(fed.url)
        proxy.start()
        stack.callback(proxy.stop)
    revoked = None
    if "revoked" in sim.attackers:
        key = fed.enroll("rogue_revoked")
        with fed.admin() as c:
            c.post("/v1/admin/devices/rogue_revoked/revoke").raise_for_status()
        revoked = ("rogue_revoked", key)
    server_pub = read_public_key(fed.server_key_file())
    assert isinstance(server_pub, XWingPublicKey)
    return AttackCampaign(list(sim.attackers), server_url=fed.url, server_kem_public=server_pub, victim_id="edge_01",
                          proxy=proxy, revoked=revoked, seed=sim.seed)


def _wait_finished(fed: Federation, sim: SimulationConfig, on_progress: ProgressFn | None) -> dict[str, Any]:
    deadline = time.monotonic() + sim.timeout_seconds
    while True:
        if fed.server.poll() is not None:
            raise SimulationError(f"server exited with code {fed.server.returncode}; see {fed.run_dir}/logs")
        try:
            status = fed.status()
        except httpx.TimeoutException:  # a server busy with every device's requests answers late, not never
            if time.monotonic() > deadline:
                raise SimulationError(f"run did not finish within {sim.timeout_seconds:.0f} s") from None
            continue
        if on_progress is not None:
            on_progress(status)
        if status["finished"]:
            return status
        failed = sorted(d for d, p in fed.edges.items() if p.poll() not in (None, 0))
        if failed:
            named = [d + _failure_note(fed.edges[d]) for d in failed]
            raise SimulationError(f"edge node(s) {', '.join(named)} failed; see {fed.run_dir}/logs")
        if all(p.poll() is not None for p in fed.edges.values()):
            raise SimulationError(f"every edge node exited before the run finished; see {fed.run_dir}/logs")
        if time.monotonic() > deadline:
            raise SimulationError(f"run did not finish within {sim.timeout_seconds:.0f} s")
        time.sleep(0.25)


def _wait_personalized(fed: Federation, sim: SimulationConfig, *, timeout: float = 300.0) -> dict[str, Any]:
    """The devices' personalised-metrics reports, once every device sent one (or every edge exited, or timeout)."""
    deadline = time.monotonic() + timeout
    with fed.admin() as c:
        while True:
            doc: dict[str, Any] = c.get("/v1/admin/personalization").raise_for_status().json()
            done = all(p.poll() is not None for p in fed.edges.values())
            if doc["reports"] >= sim.clients or done or time.monotonic() > deadline:
                doc["personalized_reports"] = doc.pop("reports")
                doc.pop("personalize", None)
                return doc
            time.sleep(0.5)


def _failure_note(edge: subprocess.Popen[bytes] | RayFleet) -> str:
    """A Ray fleet's first failure (``" (edge_07: ...)"``); a process's is in its log."""
    failures = getattr(edge, "failures", None)
    if not failures:
        return ""
    device, why = sorted(failures.items())[0]
    more = f", and {len(failures) - 1} more" if len(failures) > 1 else ""
    return f" ({device}: {why}{more})"


def _finish(
    sim: SimulationConfig, run_dir: Path, metric: str, rounds: list[dict[str, Any]], status: dict[str, Any],
    wall: float, attacks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    write_metrics_csv(rounds, run_dir / "metrics.csv")
    write_plot(rounds, metric, run_dir / f"{metric}.png",
               title=f"QFLARE {sim.task}: {sim.clients} clients, {sim.partition}"
               + (f"({sim.alpha})" if sim.partition == "dirichlet" else ""), ylabel=metric_label(metric, sim.task))
    done = [r for r in rounds if r["status"] == "aggregated"]
    final = (done[-1].get("metrics") or {}) if done else {}
    summary: dict[str, Any] = {
        "task": sim.task,
        "clients": sim.clients,
        "rounds": sim.rounds,
        "rounds_completed": status["rounds_completed"],
        "rounds_failed": status["rounds_failed"],
        "partition": sim.partition,
        "alpha": sim.alpha if sim.partition == "dirichlet" else None,
        "seed": sim.seed,
        f"final_{metric}": final.get(metric),
        "final_loss": final.get("loss"),
        "wall_seconds": round(wall, 2),
        "accepted_updates": status["accepted_updates"],
        "rejected_updates": status["rejected_updates"],
        "rejected_requests": status["rejected_requests"],
        "run_dir": str(run_dir),
    }
    if f"baseline_{metric}" in final:
        summary[f"baseline_{metric}"] = final[f"baseline_{metric}"]
    summary["mode"] = sim.mode
    if sim.mode == "async":
        summary["buffer"], summary["max_staleness"] = sim.buffer, sim.max_staleness
    if sim.target is not None:
        summary["target"] = sim.target
        summary["time_to_target_seconds"] = time_to_target(rounds, metric, sim.target)
    summary["key_source"] = sim.key_source
    summary["enclave"] = sim.enclave
    if attacks is not None:
        summary["attacks"] = attacks
    if sim.privacy.get("mode", "none") != "none":
        # what the host's accountant reported for the last aggregated round (docs/privacy.md)
        spent = final.get("privacy") or {}
        summary["privacy"] = {"mode": sim.privacy["mode"], "epsilon": spent.get("epsilon"),
                              "delta": spent.get("delta", sim.privacy.get("delta", 1e-5)),
                              "rounds": spent.get("rounds", 0), "noise_multiplier": spent.get("noise_multiplier")}
    if sim.train is not None and sim.train.dp is not None:
        summary["privacy"] = local_privacy_summary(run_dir / "devices")
    write_summary(summary, run_dir / "summary.json")
    return summary


def time_to_target(rounds: list[dict[str, Any]], metric: str, target: float) -> float | None:
    """Seconds from the first round's opening to the close of the first aggregated round whose global
    ``metric`` reached ``target`` (accuracy at least, an error at most); ``None`` if none did."""
    if not rounds:
        return None
    start = min(float(r["opened_at"]) for r in rounds)
    for r in sorted(rounds, key=lambda r: r["round_id"]):
        value = (r.get("metrics") or {}).get(metric)
        if r["status"] != "aggregated" or not isinstance(value, int | float) or r.get("closed_at") is None:
            continue
        if (value >= target) if metric == "accuracy" else (value <= target):
            return round(float(r["closed_at"]) - start, 2)
    return None


def local_privacy_summary(devices_dir: Path) -> dict[str, Any]:
    """Local DP: what each device's accountant reported after its last training (``devices/<id>.dp.json``)."""
    reports = [json.loads(p.read_text()) for p in sorted(devices_dir.glob("*.dp.json"))]
    eps = {r["device_id"]: r["epsilon"] for r in reports}
    return {"mode": "local", "epsilon": max(eps.values(), default=None),
            "epsilon_mean": sum(eps.values()) / len(eps) if eps else None,
            "delta": reports[0]["delta"] if reports else None, "devices": len(eps), "per_device": eps,
            "noise_multipliers": sorted({r["noise_multiplier"] for r in reports})}
