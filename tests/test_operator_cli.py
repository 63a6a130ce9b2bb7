"""``qflare status``, ``rounds list/show``, ``model export`` and ``events`` against a real app (TestClient)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qflare.cli import ops
from qflare.cli.app import app
from qflare.cli.operator import OperatorClient
from tests.server.conftest import ADMIN, Harness, make_harness

runner = CliRunner()


class _Borrowed(OperatorClient):
    """The operator client over the harness's TestClient (no network); never closes it."""

    def __init__(self, harness: Harness, token: str) -> None:
        self._http = harness.client
        self._token = token

    def raw(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        self._http.headers["Authorization"] = f"Bearer {self._token}"
        try:
            return super().raw(method, path, json, params)
        finally:
            del self._http.headers["Authorization"]

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def aggregated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """A server whose round 1 aggregated three updates; the CLI talks to it with the operator token."""
    for h in make_harness(tmp_path, total=3):
        rid = h.open_round()
        for device in h.keys:
            assert h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
        monkeypatch.setattr(ops, "_client", lambda server, token, ca, h=h: _Borrowed(h, token or ADMIN))
        yield h


def test_status_shows_rounds_metric_updates_and_devices(aggregated: Harness) -> None:
    result = runner.invoke(app, ["status", "--admin-token", ADMIN])
    assert result.exit_code == 0, result.output
    assert "1 of 3 aggregated, 0 failed" in result.output
    assert "3 accepted, 0 rejected" in result.output and "registered" in result.output
    as_json = json.loads(runner.invoke(app, ["status", "--admin-token", ADMIN, "--json"]).output)
    assert as_json["rounds_completed"] == 1 and as_json["latest_model_version"] == 1


def test_rounds_list_and_show(aggregated: Harness) -> None:
    listed = runner.invoke(app, ["rounds", "list", "--admin-token", ADMIN, "--json"])
    assert listed.exit_code == 0, listed.output
    rounds = json.loads(listed.output)
    assert [(r["round_id"], r["status"]) for r in rounds][:1] == [(1, "aggregated")]
    shown = runner.invoke(app, ["rounds", "show", "1", "--admin-token", ADMIN, "--json"])
    detail = json.loads(shown.output)
    assert sorted(u["device_id"] for u in detail["updates"]) == ["edge_0", "edge_1", "edge_2"]
    table = runner.invoke(app, ["rounds", "show", "1", "--admin-token", ADMIN])
    assert table.exit_code == 0 and "edge_1" in table.output and "accepted updates" in table.output


def test_an_unknown_round_is_a_not_found_error(aggregated: Harness) -> None:
    result = runner.invoke(app, ["rounds", "show", "99", "--admin-token", ADMIN])
    assert result.exit_code != 0 and getattr(result.exception, "reason", None) == "unknown_round"


def test_model_export_as_safetensors_and_as_a_torch_state_dict(aggregated: Harness, tmp_path: Path) -> None:
    import torch
    from safetensors.numpy import load

    out = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["model", "export", "--version", "1", "--out", str(out), "--admin-token", ADMIN])
    assert result.exit_code == 0, result.output
    stored = aggregated.state.repo.get_model(1)
    assert stored is not None and hashlib.sha256(out.read_bytes()).hexdigest() == stored.sha256
    arrays = load(out.read_bytes())
    pt = tmp_path / "model.pt"
    result = runner.invoke(app, ["model", "export", "--version", "1", "--out", str(pt), "--format", "torch",
                                 "--admin-token", ADMIN])
    assert result.exit_code == 0, result.output
    state_dict = torch.load(pt, weights_only=True)
    assert set(state_dict) == set(arrays)
    for name, arr in arrays.items():
        assert state_dict[name].numpy().tolist() == arr.tolist()


def test_events_table_and_kind_filter(aggregated: Harness) -> None:
    result = runner.invoke(app, ["events", "--admin-token", ADMIN, "--limit", "200"])
    assert result.exit_code == 0, result.output
    assert "round_opened" in result.output or "round" in result.output
    only = json.loads(runner.invoke(app, ["events", "--admin-token", ADMIN, "--kind", "device_enrolled",
                                          "--json"]).output)
    assert only and {e["kind"] for e in only} == {"device_enrolled"}


def test_a_wrong_operator_token_is_refused(aggregated: Harness) -> None:
    result = runner.invoke(app, ["status", "--admin-token", "not-the-operator-token-0123456789"])
    assert result.exit_code != 0
    assert getattr(result.exception, "reason", None) in {"operator_auth", "unauthenticated"}
