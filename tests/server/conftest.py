"""Server fixtures: an app on a temporary SQLite file with a controllable clock and no background ticker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qflare.config import AggregationConfig, EnclaveHostConfig, GlobalConfig, RoundsConfig, ServerConfig, TrainConfig
from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.envelope import ResponseOpener, seal_request
from qflare.crypto.keyfile import serialize_public_key
from qflare.fl.port import AggregationBackend
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.server.app import build_state, create_app
from qflare.server.state import ServerState

ADMIN = "operator-token-for-tests-0123456789"


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(db_url: str, key_dir: str, enclave: EnclaveHostConfig | None = None, **rounds: object) -> GlobalConfig:
    r = {"total": 2, "min_devices": 3, "min_quorum": 2, "deadline_seconds": 60.0, **rounds}
    return GlobalConfig(
        task="digits",
        enclave=enclave or EnclaveHostConfig(backend="none"),
        server=ServerConfig(db_url=db_url, key_dir=key_dir, max_update_bytes=256 * 1024, max_request_bytes=16384),
        rounds=RoundsConfig.model_validate(r),
        training=TrainConfig(epochs=1, batch_size=32, lr=0.05),
    )


@dataclass
class Reply:
    """A device-route answer with the sealed body opened (as the edge client would)."""

    status_code: int
    content: bytes
    text: str
    raw: bytes
    sealed: bool = False

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class Harness:
    client: TestClient
    state: ServerState
    clock: FakeClock
    keys: dict[str, SigningKey]

    @property
    def server_pub(self) -> XWingPublicKey:
        return self.state.gateway.opener.kem_public_key()

    def seal(
        self, device_id: str, path: str, payload: bytes = b"", *, round_id: int | None = None,
        key: SigningKey | None = None, now: float | None = None,
    ) -> tuple[bytes, ResponseOpener]:
        return seal_request(
            key or self.keys[device_id], self.server_pub, device_id=device_id, method="POST", path=path,
            round_id=round_id, payload=payload, now=self.clock() if now is None else now,
        )

    def send(self, path: str, envelope: bytes, opener: ResponseOpener | None = None) -> Reply:
        """POST an envelope; a sealed answer (a 200, or a refusal after the request was opened) is opened.

        ``raw`` is the answer as a device reads it: the error JSON of a refusal, sealed or not.
        """
        resp = self.client.post(path, content=envelope)
        sealed = resp.headers.get("content-type", "").startswith("application/vnd.qflare.response")
        if resp.status_code == 200 and opener is not None:
            body = opener.open(resp.content)
            return Reply(resp.status_code, body, body.decode(errors="replace"), resp.content, sealed)
        raw = opener.open(resp.content) if sealed and opener is not None else resp.content
        return Reply(resp.status_code, raw, raw.decode(errors="replace"), raw, sealed)

    def post(self, device_id: str, path: str, content: bytes = b"", *, round_id: int | None = None,
             key: SigningKey | None = None) -> Reply:
        if round_id is None and "/rounds/" in path:
            round_id = int(path.split("/rounds/")[1].split("/")[0])
        envelope, opener = self.seal(device_id, path, content, round_id=round_id, key=key)
        return self.send(path, envelope, opener)

    def poll_all(self) -> None:
        for d in self.keys:
            assert self.post(d, "/v1/device/heartbeat").status_code == 200

    def open_round(self) -> int:
        self.poll_all()
        self.state.orchestrator.tick()
        rnd = self.state.orchestrator.current_round()
        assert rnd is not None
        return rnd.round_id

    def global_arrays(self, version: int = 0):  # type: ignore[no-untyped-def]
        arrays, _ = load_arrays(self.state.repo.model_blob(version), self.state.orchestrator.spec)
        return arrays

    def update_blob(self, *, num_examples: int = 10, scale: float = 1.0, version: int = 0) -> bytes:
        arrays = {k: v * scale for k, v in self.global_arrays(version).items()}
        return dump_arrays(arrays, {"num_examples": str(num_examples), "train_loss": "0.5"})

    def snapshot(self) -> tuple[object, ...]:
        """Everything a refused request must leave unchanged (events aside, which record the refusal)."""
        repo = self.state.repo
        rounds = tuple((r.round_id, r.status, r.new_version) for r in repo.list_rounds())
        devices = tuple((d.device_id, d.status) for d in repo.list_devices())
        counts = dict(self.state.orchestrator._counts)
        return rounds, devices, repo.count_updates(), len(repo.list_models()), tuple(sorted(counts.items()))


def config_for(tmp_path: Path, *, enclave: bool = False, **rounds: object) -> GlobalConfig:
    settings = EnclaveHostConfig(backend="simulated", work_dir=str(tmp_path / "enclave")) if enclave else None
    return make_config(f"sqlite:///{tmp_path / 'qflare.db'}", str(tmp_path / "server-keys"), settings, **rounds)


def enroll(client: TestClient, device_id: str, key: SigningKey, key_source: str = "mlkem") -> None:
    pub = serialize_public_key(key.public_key()).decode()
    r = client.post("/v1/admin/devices", json={"device_id": device_id, "public_key": pub, "key_source": key_source},
                    headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text


def make_harness(tmp_path: Path, keys: dict[str, SigningKey] | None = None, *, enroll_devices: bool = True,
                 enclave: bool = False, backend: AggregationBackend | None = None,
                 aggregation: AggregationConfig | None = None, **rounds: object) -> Iterator[Harness]:
    clock = FakeClock()
    config = config_for(tmp_path, enclave=enclave, **rounds)
    if aggregation is not None:
        config = config.model_copy(update={"aggregation": aggregation})
    state = build_state(config, admin_token=ADMIN, clock=clock, backend=backend)
    app = create_app(state, run_ticker=False)
    keys = keys if keys is not None else {f"edge_{i}": _KEYS[i] for i in range(3)}
    with TestClient(app) as client:
        if enroll_devices:
            for device_id, key in keys.items():
                enroll(client, device_id, key)
        yield Harness(client=client, state=state, clock=clock, keys=keys)
    state.close()


# Key generation costs a few ms; the same identities serve every test (each test has its own server).
_KEYS = [SigningKey.generate() for _ in range(4)]
OUTSIDER_KEY = _KEYS[3]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)
