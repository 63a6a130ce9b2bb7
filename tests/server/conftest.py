"""Server fixtures: an app on a temporary SQLite file with a controllable clock and no background ticker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qflare.config import GlobalConfig, RoundsConfig, ServerConfig, TrainConfig
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


def make_config(db_url: str, **rounds: object) -> GlobalConfig:
    r = {"total": 2, "min_devices": 3, "min_quorum": 2, "deadline_seconds": 60.0, **rounds}
    return GlobalConfig(
        task="digits",
        server=ServerConfig(db_url=db_url, max_update_bytes=256 * 1024, max_request_bytes=4096),
        rounds=RoundsConfig.model_validate(r),
        training=TrainConfig(epochs=1, batch_size=32, lr=0.05),
    )


@dataclass
class Harness:
    client: TestClient
    state: ServerState
    clock: FakeClock
    tokens: dict[str, str]

    def device_headers(self, device_id: str, token: str | None = None) -> dict[str, str]:
        return {"X-QFLARE-Device": device_id, "Authorization": f"Bearer {token or self.tokens[device_id]}"}

    def post(self, device_id: str, path: str, content: bytes = b"", token: str | None = None):  # type: ignore[no-untyped-def]
        return self.client.post(path, content=content, headers=self.device_headers(device_id, token))

    def poll_all(self) -> None:
        for d in self.tokens:
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


def make_harness(tmp_path: Path, **rounds: object) -> Iterator[Harness]:
    clock = FakeClock()
    cfg = make_config(f"sqlite:///{tmp_path / 'qflare.db'}", **rounds)
    state = build_state(cfg, admin_token=ADMIN, clock=clock)
    app = create_app(state, run_ticker=False)
    with TestClient(app) as client:
        tokens = {}
        for i in range(3):
            r = client.post("/v1/admin/devices", json={"device_id": f"edge_{i}"},
                            headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 201, r.text
            tokens[f"edge_{i}"] = r.json()["token"]
        yield Harness(client=client, state=state, clock=clock, tokens=tokens)
    state.repo.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)
