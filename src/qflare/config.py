"""Configuration files: ``global_config.yaml`` (server) and ``device_config.yaml`` (edge node).

Both are validated with Pydantic, unknown keys are refused, and every failure becomes one
:class:`~qflare.errors.ConfigError` whose message names the offending key path, e.g.
``rounds.min_quorum: Input should be a valid integer (got 'three')``. Configuration is read once, at
start-up, and then passed around as immutable objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qflare.crypto import KeySource
from qflare.errors import ConfigError
from qflare.fl.training_config import LocalDPConfig, TrainConfig

if TYPE_CHECKING:
    from qflare.fl.data.csv_series import CsvSource

__all__ = [
    "AggregationConfig",
    "AttestationConfig",
    "DataConfig",
    "DeviceConfig",
    "DeviceLedgerConfig",
    "EnclaveHostConfig",
    "EvaluationConfig",
    "GlobalConfig",
    "HEConfig",
    "LedgerConfig",
    "PersonalizeConfig",
    "ReputationConfig",
    "RetryConfig",
    "RoundsConfig",
    "QKDConfig",
    "ServerConfig",
    "SimulationAttackConfig",
    "TrainConfig",
    "dump_yaml",
    "load_device_config",
    "load_global_config",
    "parse_config",
]

TaskName = Literal["digits", "digits-wide", "traffic", "pollution"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class RoundsConfig(_Strict):
    """Round orchestration: how many rounds, who is selected, when a round closes."""

    total: int = Field(20, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    min_devices: int = Field(2, ge=1, description="active devices needed before a round starts (less those "
                             "quarantined or revoked, never below min_quorum)")
    min_quorum: int = Field(2, ge=1, description="updates needed to aggregate at the deadline")
    deadline_seconds: float = Field(120.0, gt=0)
    close_on_quorum: bool = Field(
        False, description="close as soon as min_quorum updates arrived instead of waiting for all"
    )
    active_window_seconds: float = Field(30.0, gt=0, description="a device seen this recently is active")
    seed: int = 0
    mode: Literal["sync", "async"] = Field(
        "sync", description="async: FedBuff, a model every `buffer` updates, stale updates weighted (docs/learning.md)"
    )
    buffer: int = Field(10, ge=1, description="async: updates per published model (FedBuff's K)")
    max_staleness: int = Field(10, ge=0, description="async: refuse an update trained more than this many versions ago")
    staleness_exponent: float = Field(0.5, ge=0, description="async: a stale step is weighted (1 + staleness) ** -a")
    selector: Literal["uniform", "adaptive"] = Field(
        "uniform", description="who is selected: uniform sampling, or selection.AdaptiveSelector (with fairness)"
    )
    max_wait_rounds: int = Field(5, ge=1, description="adaptive: a device left out this many rounds is taken first")

    @model_validator(mode="after")
    def _quorum_fits(self) -> RoundsConfig:
        if self.min_quorum > self.min_devices:
            raise ValueError("min_quorum must not exceed min_devices")
        if self.mode == "async" and self.buffer > self.min_devices:
            # One update per device and buffer: a buffer needs `buffer` distinct devices, and a buffer
            # opens once min_devices are active. (The server also checks it against the enrolled devices.)
            raise ValueError(f"buffer_exceeds_devices: rounds.buffer {self.buffer} is larger than the "
                             f"{self.min_devices} devices of rounds.min_devices; a buffer could never fill")
        return self


class PrivacyConfig(_Strict):
    """Differential privacy (qflare.fl.privacy, docs/privacy.md): ``central`` clips and noises in the aggregator."""

    mode: Literal["none", "central"] = "none"
    noise_multiplier: float | None = Field(None, gt=0, description="noise std / clip; or give target_epsilon")
    target_epsilon: float | None = Field(
        None, gt=0, description="budget for rounds.total; alone, the accountant picks noise_multiplier for it"
    )
    clip: float = Field(1.0, gt=0, description="L2 bound on each step (update - base); the first bound if adaptive")
    delta: float = Field(1e-5, gt=0, lt=1)
    adaptive: bool = Field(False, description="adaptive clipping (Andrew et al. 2021) towards target_quantile")
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(0.2, gt=0)

    @model_validator(mode="after")
    def _noise_given(self) -> PrivacyConfig:
        if self.mode != "none" and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("privacy.noise_multiplier or privacy.target_epsilon is needed with mode central")
        return self


class HEConfig(_Strict):
    """Homomorphic aggregation (qflare.fl.he, docs/privacy.md): ``ckks`` sums ciphertexts the server cannot read."""

    scheme: Literal["none", "ckks"] = "none"
    public_context_file: str | None = Field(
        None, description="the operator's public CKKS context (qflare he init --public-out); never the secret one"
    )

    @model_validator(mode="after")
    def _context_given(self) -> HEConfig:
        if self.scheme == "ckks" and not self.public_context_file:
            raise ValueError("scheme ckks needs public_context_file (qflare he init --public-out)")
        return self


class AggregationConfig(_Strict):
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    he: HEConfig = Field(default_factory=HEConfig)
    rule: str = Field("fedavg", description="aggregation strategy (qflare.fl.strategies): fedavg, ...")
    max_update_norm: float | None = Field(None, gt=0, description="reject updates with a larger L2 norm")
    params: dict[str, float | int | str | None] = Field(
        default_factory=dict, description="the rule's parameters, e.g. {f: 2} for krum, {base: median} for fedadam"
    )

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        from qflare.fl.strategies import STRATEGIES

        if value not in STRATEGIES:
            raise ValueError(f"unknown aggregation rule {value!r}; known: {', '.join(sorted(STRATEGIES))}")
        return value

    @model_validator(mode="after")
    def _known_params(self) -> AggregationConfig:
        from qflare.fl.strategies import STRATEGIES

        try:
            STRATEGIES[self.rule].check_params(self.params)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self

    @model_validator(mode="after")
    def _he_sums_only(self) -> AggregationConfig:
        # Only sums exist on CKKS ciphertexts: no other rule, no clipping, no norm check, no central DP.
        if self.he.scheme == "ckks":
            clash = [k for k, bad in (("rule " + self.rule, self.rule != "fedavg"),
                                      ("max_update_norm", self.max_update_norm is not None),
                                      ("privacy.mode " + self.privacy.mode, self.privacy.mode != "none")) if bad]
            if clash:
                raise ValueError(f"he.scheme ckks sums ciphertexts (FedAvg only); not with {', '.join(clash)}")
        return self


class ReputationConfig(_Strict):
    """Quarantine of devices whose updates are refused or flagged as outliers (qflare.server.reputation)."""

    enabled: bool = True
    threshold: int = Field(3, ge=1, description="rounds with a refused or flagged update that quarantine a device")
    window: int = Field(5, ge=1, description="... among the last this many rounds (by round id)")


class CsvLayoutConfig(_Strict):
    """How ``csv_path`` is laid out (docs: README, "Your own data"); the defaults read METR-LA/PEMS exports."""

    delimiter: str | None = Field(None, description="None: whichever of , ; tab the header uses most")
    decimal: Literal[".", ","] = "."
    timestamp_columns: list[str] | None = Field(None, description="None: the first column; UCI: [Date, Time]")
    timestamp_format: str | None = Field(None, description="strptime format; None: ISO 8601")
    columns: list[str] | None = Field(None, description="sensor columns to use; None: every other column")
    missing_value: float | None = Field(None, description="a reading meaning missing: 0 (METR-LA), -200 (UCI)")

    def source(self, path: str) -> CsvSource:
        from qflare.fl.data.csv_series import CsvLayout, CsvSource

        return CsvSource(path, CsvLayout(
            delimiter=self.delimiter, decimal=self.decimal,
            timestamp_columns=tuple(self.timestamp_columns) if self.timestamp_columns else None,
            timestamp_format=self.timestamp_format, columns=tuple(self.columns) if self.columns else None,
            missing_sentinel=self.missing_value))


class EvaluationConfig(_Strict):
    enabled: bool = True
    csv_path: str | None = None
    csv: CsvLayoutConfig = CsvLayoutConfig()


class RateLimitConfig(_Strict):
    """Token buckets (server/ratelimit.py): ``per_second`` refill and ``burst``; ``enabled: false`` turns all off."""

    enabled: bool = True
    operator_failures_per_second: float = Field(0.5, gt=0, description="wrong operator tokens, per source")
    operator_failures_burst: int = Field(10, ge=1)
    enrollment_per_second: float = Field(1.0, gt=0, description="self-enrollment attempts, per source")
    enrollment_burst: int = Field(20, ge=1)
    device_refusals_per_second: float = Field(20.0, gt=0, description="device requests refused unopened, per source")
    device_refusals_burst: int = Field(200, ge=1)
    device_requests_per_second: float = Field(
        5.0, gt=0, description="authenticated requests per device (an honest device long-polls: well under 1/s)")
    device_requests_burst: int = Field(60, ge=1)


class ServerConfig(_Strict):
    deployment: Literal["demo", "production"] = Field(
        "demo",
        description="production refuses the demo-only bypasses: a simulated or absent enclave (no isolation) "
                    "and an operator token written in the config file",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    db_url: str = "sqlite:///qflare.db"
    max_update_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(64 * 1024, ge=256, description="limit for small device requests")
    admin_token: str | None = Field(None, min_length=16)
    keep_update_blobs: bool = Field(False, description="keep raw updates after their round aggregated")
    key_dir: str = Field(".qflare/server-keys", description="the server's KEM and signing keys (made on first start)")
    state_dir: str = Field(".qflare/server-state", description="in-process server optimizer state between rounds "
                           "(fedavgm/fedadam/...; with an enclave it is sealed inside the enclave's work_dir)")
    timestamp_window_seconds: float = Field(120.0, gt=0, le=3600, description="accepted request clock skew, +-")
    enrollment_token_ttl_seconds: float = Field(3600.0, gt=0)
    tls_cert: str | None = Field(None, description="PEM certificate: serve HTTPS")
    tls_key: str | None = Field(None, description="PEM private key for tls_cert")
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    header_timeout_seconds: float = Field(10.0, gt=0, description="request line and headers complete within this")
    max_header_bytes: int = Field(16384, ge=1024, description="larger request headers are answered 431")
    body_chunk_timeout_seconds: float = Field(10.0, gt=0, description="longest gap between body chunks")
    body_timeout_seconds: float = Field(300.0, gt=0, description="the whole request body within this")
    keep_alive_seconds: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    max_uploads_in_flight: int = Field(
        8, ge=1, description="update uploads read, opened and stored at once; beyond, 503 server_busy with "
                             "Retry-After before the body is read (server/ingest.py): bounds the memory uploads use")
    refusal_event_retention_seconds: float = Field(7 * 86400.0, gt=0, description="refusal events older are purged")
    max_refusal_events: int = Field(100_000, ge=100, description="at most this many refusal events are kept")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class QKDConfig(_Strict):
    """This SAE's ETSI GS QKD 014 key management entity (mutual TLS)."""

    kme_url: str = Field(description="e.g. https://127.0.0.1:8443")
    cert: str = Field(description="this SAE's client certificate (PEM); its CN is the SAE ID")
    key: str = Field(description="the client certificate's private key (PEM)")
    ca: str = Field(description="the CA that signed the KME's certificate (pinned)")
    peer_sae_id: str | None = Field(None, description="edge: the server's SAE ID")
    key_size_bits: int = Field(256, ge=256, le=8192, multiple_of=8)
    timeout_seconds: float = Field(5.0, gt=0)


class EnclaveHostConfig(_Strict):
    """How the host runs the enclave (the server's ``enclave:`` section): which backend, where its state lives.

    What the enclave itself enforces is :class:`qflare.enclave.config.EnclaveConfig`, which is measured.
    """

    backend: Literal["none", "simulated", "gramine"] = Field(
        "simulated", description="none: in the server process (no isolation); gramine: real SGX"
    )
    work_dir: str = Field(".qflare/enclave", description="sealed state, platform (simulated), SIGSTRUCT, logs")
    call_timeout_seconds: float = Field(300.0, gt=0)


class AttestationConfig(_Strict):
    """What an edge node requires of the server's enclave before it sends anything."""

    expected_measurement: str = Field(pattern=r"^[0-9a-f]{64}$", description="qflare enclave measure")
    expected_signer: str = Field(pattern=r"^[0-9a-f]{64}$", description="the enclave signer (MRSIGNER)")
    trust_root_file: str | None = Field(None, description="simulated platform's attestation public key")
    allow_simulated: bool = Field(
        False, description="DEMO ONLY: accept a simulated enclave, which has no hardware isolation (logged at start)"
    )
    min_svn: int = Field(1, ge=0)


class LedgerConfig(_Strict):
    """The server's audit ledger (``docs/ledger.md``)."""

    enabled: bool = Field(True, description="keep the audit ledger (off only to measure its cost)")
    checkpoint_interval_seconds: float = Field(60.0, gt=0, description="checkpoint when the log grew and this passed")


class DeviceLedgerConfig(_Strict):
    """A device auditing the server's ledger: the pinned log key and an optional k-of-n witness policy."""

    origin: str = "qflare.local/ledger"
    log_key_file: str | None = Field(
        None, description="the log's composite public key (server-keys/ledger-log.pub; the enclave's key)")
    vkeys: list[str] | None = Field(None, description="or the log's two note verifier keys (Ed25519, ML-DSA-65)")
    require_witnesses: int = Field(0, ge=0, description="cosignatures needed from witness_keys (k of n)")
    witness_keys: list[str] = Field(default_factory=list, description="trusted witness cosignature verifier keys")
    witness_wait_seconds: float = Field(
        60.0, ge=0, description="how long the device waits for the log's newest checkpoint to be cosigned "
                                "(witnesses cosign when they poll) before it refuses it")
    state_file: str | None = Field(None, description="the last verified checkpoint (default: beside the identity key)")
    audit_interval_seconds: float = Field(
        60.0, ge=0, description="the longest between two audits while none is due (an accepted update not yet "
                                "proven included, the first contact, done); 0: audit on every contact")

    @model_validator(mode="after")
    def _pinned(self) -> DeviceLedgerConfig:
        if (self.log_key_file is None) == (self.vkeys is None):
            raise ValueError("ledger: set exactly one of log_key_file and vkeys")
        if self.vkeys is not None and len(self.vkeys) != 2:
            raise ValueError("ledger.vkeys: the Ed25519 and the ML-DSA-65 verifier key")
        if self.require_witnesses > len(self.witness_keys):
            raise ValueError("ledger.require_witnesses exceeds the number of witness_keys")
        return self


class GlobalConfig(_Strict):
    """The server's ``global_config.yaml``."""

    task: TaskName = "digits"
    seed: int = 0
    server: ServerConfig = ServerConfig()
    rounds: RoundsConfig = RoundsConfig()
    training: TrainConfig = TrainConfig()
    aggregation: AggregationConfig = AggregationConfig()
    reputation: ReputationConfig = ReputationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    qkd: QKDConfig | None = Field(None, description="the server's KME (slave SAE), for qkd/hybrid devices")
    enclave: EnclaveHostConfig = EnclaveHostConfig()
    ledger: LedgerConfig = LedgerConfig()

    def demo_bypasses(self) -> list[str]:
        """The demo-only shortcuts this configuration uses, in words (printed at start; refused in production)."""
        found = []
        if self.enclave.backend == "none":
            found.append("enclave.backend: none (updates decrypted and aggregated in the server process)")
        elif self.enclave.backend == "simulated":
            found.append("enclave.backend: simulated (an enclave process without hardware isolation, "
                         "signed by a development key)")
        if self.server.admin_token:
            found.append("server.admin_token in the config file (use QFLARE_ADMIN_TOKEN or the token file)")
        return found

    @model_validator(mode="after")
    def _no_demo_bypass_in_production(self) -> GlobalConfig:
        if self.server.deployment == "production" and self.demo_bypasses():
            raise ValueError("server.deployment is production, which refuses the demo-only "
                             + "; ".join(self.demo_bypasses()))
        return self

    @model_validator(mode="after")
    def _he_in_process(self) -> GlobalConfig:
        if self.aggregation.he.scheme == "ckks":
            if self.enclave.backend != "none":
                raise ValueError("aggregation.he.scheme ckks: the ciphertexts are summed on the host (it needs no "
                                 "secret, docs/privacy.md); set enclave.backend: none")
            if self.evaluation.enabled:
                raise ValueError("aggregation.he.scheme ckks: the server cannot evaluate an encrypted model; set "
                                 "evaluation.enabled: false (devices evaluate the decrypted model)")
            if self.rounds.mode == "async":
                raise ValueError("aggregation.he.scheme ckks: synchronous rounds only (an async device moves its "
                                 "step onto the newest model in the clear); not rounds.mode async")
        return self

    @model_validator(mode="after")
    def _privacy_budget_fits(self) -> GlobalConfig:
        # Refuse at start a DP budget the planned rounds would exceed (not after spending it).
        privacy = self.aggregation.privacy
        if privacy.mode == "central" and self.rounds.mode == "async":
            # The accountant composes sampled synchronous rounds (rate rounds.fraction); a buffer is not one.
            raise ValueError("aggregation.privacy.mode central is accounted for synchronous rounds only, "
                             "not rounds.mode async")
        if privacy.mode == "central" and privacy.target_epsilon is not None and privacy.noise_multiplier is not None:
            from qflare.fl.privacy import plan_central

            try:
                plan_central(noise_multiplier=privacy.noise_multiplier, target_epsilon=privacy.target_epsilon,
                             delta=privacy.delta, sampling_rate=self.rounds.fraction, rounds=self.rounds.total)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return self


class DataConfig(_Strict):
    """Where an edge node's local data comes from."""

    task: TaskName = "digits"
    partition: Literal["iid", "dirichlet", "sensor"] | None = Field(
        None, description="None: the task's natural split (dirichlet for digits, sensor for forecasting)"
    )
    alpha: float = Field(0.5, gt=0)
    num_partitions: int = Field(1, ge=1)
    partition_index: int = Field(0, ge=0)
    seed: int = 0
    csv_path: str | None = None
    csv: CsvLayoutConfig = CsvLayoutConfig()

    @model_validator(mode="after")
    def _index_in_range(self) -> DataConfig:
        if self.partition_index >= self.num_partitions:
            raise ValueError("partition_index must be smaller than num_partitions")
        return self


class RetryConfig(_Strict):
    initial_seconds: float = Field(0.5, gt=0)
    max_seconds: float = Field(10.0, gt=0)
    give_up_after_seconds: float | None = Field(None, gt=0, description="None retries forever")


class SimulationAttackConfig(_Strict):
    """DANGER, simulations only: makes this device poison the federation (:mod:`qflare.fl.poisoning`).

    The edge node refuses to start with it unless ``QFLARE_SIMULATION=1`` is set.
    """

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


class PersonalizeConfig(_Strict):
    """Personalised FL on this device (docs/learning.md): once the run is done, it reports the held-out metric
    of the global and of its personalised model (signed, ``POST /v1/device/metrics``)."""

    method: Literal["finetune", "fedper", "ditto"]
    epochs: int | None = Field(None, ge=1, description="finetune: local epochs (default: the task's)")
    ditto_lambda: float = Field(0.1, gt=0, description="ditto: pull of the personal model towards the global one")


class DeviceConfig(_Strict):
    """An edge node's ``device_config.yaml``."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    server_url: str = "http://127.0.0.1:8000"
    identity_key_file: str = Field(description="the device's private identity key (qflare device keygen)")
    identity_key_passphrase_env: str | None = Field(
        None, description="environment variable holding the identity key's passphrase"
    )
    server_public_key_file: str | None = Field(None, description="the server's pinned KEM public key")
    server_key_fingerprint: str | None = Field(
        None, description="pin: fetch the server key from the server and require this fingerprint"
    )
    key_source: KeySource = KeySource.MLKEM
    qkd: QKDConfig | None = Field(None, description="this device's KME (master SAE), for key_source qkd/hybrid")
    ca_file: str | None = Field(None, description="pinned CA for HTTPS (qflare init)")
    attestation: AttestationConfig | None = Field(
        None, description="verify the server's enclave quote and take its keys from it"
    )
    data: DataConfig = DataConfig()
    poll_interval_seconds: float = Field(1.0, gt=0)
    long_poll_seconds: float = Field(
        10.0, ge=0, le=30,
        description="hold each task poll up to this long on the server until a round opens or closes "
                    "(0: plain polling)",
    )
    request_timeout_seconds: float = Field(60.0, gt=0)
    retry: RetryConfig = RetryConfig()
    torch_threads: int = Field(1, ge=1)
    exit_when_done: bool = True
    ledger: DeviceLedgerConfig | None = Field(None, description="audit the server's ledger (docs/ledger.md)")
    local_dp: LocalDPConfig | None = Field(
        None, description="DP-SGD on this device whatever the server's task says (docs/privacy.md, local DP)"
    )
    he_context_file: str | None = Field(
        None, description="the operator's secret CKKS context (qflare he init): encrypt updates, decrypt the "
                          "aggregate (docs/privacy.md, CKKS)"
    )
    cost_log: bool = Field(False, description="log each round's bytes on the wire and encode/decode times")
    simulation_attack: SimulationAttackConfig | None = Field(
        None, description="DANGER: poison this device's updates (qflare simulate --attack; needs QFLARE_SIMULATION=1)"
    )
    personalize: PersonalizeConfig | None = Field(
        None, description="personalise the model and report its held-out metric (qflare simulate --personalize)"
    )

    @model_validator(mode="after")
    def _server_key_pinned(self) -> DeviceConfig:
        if self.server_public_key_file is None and self.server_key_fingerprint is None and self.attestation is None:
            raise ValueError("pin the server key: set attestation, server_public_key_file or server_key_fingerprint")
        if self.attestation is not None and (self.server_public_key_file or self.server_key_fingerprint):
            raise ValueError(
                "with attestation, pin no server key: the attested quote binds the enclave's keys (a pinned "
                ".qflare/server-keys/server-kem.pub is not the key an enclave uses); set server_public_key_file "
                "and server_key_fingerprint to null"
            )
        if self.long_poll_seconds + 5 > self.request_timeout_seconds:
            raise ValueError(f"request_timeout_seconds ({self.request_timeout_seconds:g}) must exceed "
                             f"long_poll_seconds ({self.long_poll_seconds:g}) by at least 5 s: a held task poll "
                             "would time out")
        if self.key_source != "mlkem" and (self.qkd is None or not self.qkd.peer_sae_id):
            raise ValueError(f"key_source {self.key_source} needs a qkd section with peer_sae_id")
        return self

    def resolve(self, path: str, base: Path) -> Path:
        """A path from this config, relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else base / p


_C = TypeVar("_C", bound=BaseModel)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or item["type"] == "missing" else f" (got {got!r})"
        parts.append(f"{path}: {msg}{shown}")
    return "; ".join(parts)


def parse_config(model: type[_C], data: Any, *, source: str = "config") -> _C:
    """Validate ``data`` as ``model``; raise :class:`ConfigError` naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _read_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})", reason="config_unreadable") from None
    except UnicodeDecodeError as exc:  # found by tests/fuzz/test_parsers.py
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})", reason="config_not_yaml") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})", reason="config_not_yaml") from None


def load_global_config(path: str | Path | None) -> GlobalConfig:
    """Load ``global_config.yaml``; ``None`` gives the defaults."""
    if path is None:
        return GlobalConfig()
    return parse_config(GlobalConfig, _read_yaml(path), source=str(path))


def load_device_config(path: str | Path) -> DeviceConfig:
    """Load ``device_config.yaml``."""
    return parse_config(DeviceConfig, _read_yaml(path), source=str(path))


def dump_yaml(config: BaseModel, path: str | Path) -> None:
    """Write a config object as YAML (used by ``qflare simulate`` to configure its nodes)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
