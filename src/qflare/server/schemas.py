"""Pydantic shapes at the HTTP boundary. Domain code never sees these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qflare.crypto import KeySource

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)




class DeviceEnroll(BaseModel):
    """An operator enrolls a device's public identity key (the contents of its ``.pub`` file)."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: str = Field(max_length=16384, description="the device's public key file (qflare device keygen)")
    key_source: KeySource = KeySource.MLKEM
    max_examples: int | None = Field(None, ge=1, le=2**31 - 1, description="the most training examples one "
                                     "update may claim (the device's declared dataset size); larger claims are "
                                     "refused (num_examples_above_cap)")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str | None = Field(None, pattern=DEVICE_ID_PATTERN, description="bind the token to one device id")
    ttl_seconds: float | None = Field(None, gt=0, le=30 * 86400)
    key_source: KeySource = KeySource.MLKEM


class TokenCreated(_Out):
    token: str = Field(description="one-time enrollment token; shown once, stored only as a hash")
    device_id: str | None
    expires_at: float


class SelfEnroll(BaseModel):
    """A device enrolls itself with a one-time token, proving possession of its key by a signature."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: str = Field(max_length=16384)
    token: str = Field(min_length=16, max_length=256)
    signature: str = Field(max_length=8192, description="base64 composite signature, see docs/protocol.md")


class DevicePublic(_Out):
    device_id: str
    status: str
    key_source: str
    fingerprint: str
    created_at: float
    last_seen_at: float | None
    revoked_at: float | None
    quarantine_reason: str | None = None  # why reputation quarantined it (status "quarantined")
    max_examples: int | None = None  # the enrolled cap on an update's num_examples


class ServerKeysPublic(_Out):
    kem_public_key: str = Field(description="the server's X-Wing public key file")
    kem_fingerprint: str
    timestamp_window_seconds: float


class TaskResponse(_Out):
    status: Literal["train", "wait", "done"]
    retry_after: float
    server_time: float
    round_id: int | None = Field(None, description='with "train": the round to train for; with "wait": the open '
                                                   "round this device's update was accepted in (it waits for it "
                                                   "to close)")
    model_version: int | None = None
    model_sha256: str | None = None
    deadline_at: float | None = None
    train_config: dict[str, Any] | None = None
    task_signature: str | None = Field(None, description="base64; the enclave's signature over the round task")
    model_signature: str | None = Field(None, description="base64; the enclave's signature over the base model")
    model_round_id: int | None = Field(None, description="the round that produced the base model")
    reason: str | None = Field(None, description='with "wait": what the device waits for, in words')
    waited: float | None = Field(None, description="with ?wait=: seconds the server held the request (long-poll); "
                                                   "a device that gets a wait answer with it asks again at once")
    mode: Literal["sync", "async"] = Field("sync", description="rounds.mode; async: upload with ?base_version=")
    staleness_exponent: float | None = Field(None, description="async: a rebased stale step is weighted "
                                                               "(1 + staleness) ** -staleness_exponent")
    max_staleness: int | None = Field(None, description="async: updates more versions behind are refused")


class AttestationPublic(_Out):
    quote: str = Field(description="base64 quote over the served keys and the verifier's nonce")
    public_keys: str = Field(description="base64 EnclavePublicKeys (X-Wing KEM key, signing key)")
    measurement: str
    signer: str
    simulated: bool


class UpdateAccepted(_Out):
    round_id: int
    device_id: str
    sha256: str
    num_examples: int
    # Where the update_accepted entry sits in the audit ledger (the device checks its inclusion proof
    # after the next checkpoint); absent without a ledger or while the append is pending.
    ledger_index: int | None = None
    ledger_leaf_hash: str | None = None
    # The entry itself (base64): the device checks it names its update and carries the log key's
    # signature (the enclave's, when one runs) before it waits for the inclusion proof.
    ledger_entry: str | None = None


class Heartbeat(_Out):
    device_id: str
    server_time: float


class RoundPublic(_Out):
    round_id: int
    status: str
    base_version: int
    new_version: int | None
    selected: list[str]
    opened_at: float
    deadline_at: float
    closed_at: float | None
    close_reason: str | None
    metrics: dict[str, Any] | None


class ModelPublic(_Out):
    version: int
    sha256: str
    spec_fingerprint: str
    round_id: int | None
    created_at: float


class UpdatePublic(_Out):
    round_id: int
    device_id: str
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    received_at: float
    dp_epsilon: float | None = None


class RoundDetailPublic(_Out):
    round: RoundPublic
    updates: list[UpdatePublic]


class EventPublic(_Out):
    event_id: int
    ts: float
    kind: str
    device_id: str | None
    round_id: int | None
    reason: str | None
    detail: str | None


class StatusResponse(_Out):
    task: str
    metric: str
    rounds_total: int
    rounds_completed: int
    rounds_failed: int
    finished: bool
    current_round: RoundPublic | None
    current_round_updates: int
    latest_metrics: dict[str, Any] | None
    latest_model_version: int | None
    accepted_updates: int
    rejected_updates: int
    rejected_requests: int
    devices_registered: int
    devices_active: int


class ErrorDetail(BaseModel):
    reason: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
