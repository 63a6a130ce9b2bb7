"""Central DP on the deployed path (in-process backend): epsilon in the round metrics, stop at the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.config import AggregationConfig, PrivacyConfig
from qflare.errors import ConfigError
from qflare.fl.privacy import DPFixedClipping, epsilon_for
from tests.server.conftest import Harness, config_for, make_harness


def _upload(h: Harness, rid: int, device: str, **kw: float):  # type: ignore[no-untyped-def]
    return h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob(**kw))  # type: ignore[arg-type]


def test_round_metrics_carry_epsilon_and_the_run_stops_at_its_budget(tmp_path: Path) -> None:
    # Prepare: a budget for the two planned rounds at z=2
    budget = epsilon_for(2.0, 1.0, 2, 1e-5) + 1e-9
    agg = AggregationConfig(rule="fedavg", privacy=PrivacyConfig(mode="central", noise_multiplier=2.0,
                                                                 target_epsilon=budget, clip=1.0))
    for h in make_harness(tmp_path, aggregation=agg):
        backend = h.state.orchestrator.backend
        assert isinstance(getattr(backend, "strategy", None), DPFixedClipping)
        rid = h.open_round()
        # the budget shrinks to what one round spends (as when more devices are selected than planned)
        accountant = h.state.orchestrator.privacy
        assert accountant is not None and not h.state.orchestrator.finished()
        accountant.budget = epsilon_for(2.0, 1.0, 1, 1e-5) + 1e-9
        # Execute
        for device in ("edge_0", "edge_1", "edge_2"):
            assert _upload(h, rid, device, scale=1.0).status_code == 200
        # Assert
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        privacy = rnd.metrics["privacy"]
        assert privacy["mode"] == "central" and privacy["delta"] == 1e-5
        assert privacy["epsilon"] == pytest.approx(epsilon_for(2.0, 1.0, 1, 1e-5))
        assert h.state.orchestrator.finished()
        h.state.orchestrator.tick()
        assert h.state.orchestrator.current_round() is None
        assert h.state.repo.latest_model().version == rnd.new_version  # type: ignore[union-attr]


@pytest.mark.parametrize("enclave", [False, True], ids=["inprocess", "enclave"])
def test_a_central_dp_round_clips_and_noises_where_the_updates_are_aggregated(tmp_path: Path,
                                                                               enclave: bool) -> None:
    import numpy as np

    from qflare.enclave.measurement import measure
    from qflare.fl.serialize import load_arrays
    from qflare.server.app import enclave_config_for

    # Prepare: z=1, clip 0.01, three devices whose steps (-0.5 x model) are far larger than the clip
    z, clip = 1.0, 0.01
    agg = AggregationConfig(rule="fedavg", privacy=PrivacyConfig(mode="central", noise_multiplier=z, clip=clip))
    for h in make_harness(tmp_path, enclave=enclave, aggregation=agg):
        if enclave:
            # the enclave's measured config carries the resolved DP parameters; the host backend has no strategy
            measured = measure(enclave_config_for(h.state.config)).config
            assert measured.privacy == {"adaptive": False, "clip": clip, "mode": "central", "noise_multiplier": z}
            assert h.state.enclave is not None and h.state.orchestrator.backend is h.state.enclave
        base = h.global_arrays()
        rid = h.open_round()
        # Execute
        for device in ("edge_0", "edge_1", "edge_2"):
            assert _upload(h, rid, device, scale=0.5).status_code == 200
        # Assert: epsilon from the host's accountant, and a model = base + clipped mean + N(0, (z clip / 3)^2)
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        assert rnd.metrics["privacy"]["epsilon"] == pytest.approx(epsilon_for(z, 1.0, 1, 1e-5))
        new, _ = load_arrays(h.state.repo.model_blob(rnd.new_version), h.state.orchestrator.spec)  # type: ignore[arg-type]
        step = {k: -0.5 * v for k, v in base.items()}
        norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in step.values())))
        clipped_mean = {k: v * (clip / norm) for k, v in step.items()}
        residual = np.concatenate([(new[k] - base[k] - clipped_mean[k]).ravel() for k in base])
        assert residual.std() == pytest.approx(z * clip / 3, rel=0.1)


def test_a_budget_the_planned_rounds_exceed_is_refused_at_start(tmp_path: Path) -> None:
    from qflare.server.app import build_state

    config = config_for(tmp_path).model_copy(update={"aggregation": AggregationConfig(
        privacy=PrivacyConfig(mode="central", noise_multiplier=2.0, target_epsilon=1.0))})
    with pytest.raises(ConfigError) as err:
        build_state(config, admin_token="x" * 32)
    assert err.value.reason == "privacy_budget_exceeded"


@pytest.mark.parametrize("enclave", [False, True], ids=["inprocess", "enclave"])
def test_the_round_summary_carries_each_devices_local_dp_epsilon(tmp_path: Path, enclave: bool) -> None:
    from qflare.fl.serialize import dump_arrays

    # Prepare: three devices; two report a local-DP epsilon in their signed update, one trains without DP
    reported = {"edge_0": 1.25, "edge_1": 3.5}
    for h in make_harness(tmp_path, enclave=enclave):
        rid = h.open_round()
        # Execute
        for device in ("edge_0", "edge_1", "edge_2"):
            meta = {"num_examples": "10", "train_loss": "0.5"}
            if device in reported:
                meta.update({"dp_mode": "local", "dp_epsilon": repr(reported[device]), "dp_delta": "1e-05"})
            blob = dump_arrays({k: v * 0.9 for k, v in h.global_arrays().items()}, meta)
            assert h.post(device, f"/v1/device/rounds/{rid}/update", blob).status_code == 200
        # Assert: per device, in the round's metrics and on the stored updates
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        local = rnd.metrics["local_dp"]
        assert local["epsilon_per_device"] == reported and local["devices"] == 2
        assert local["epsilon_max"] == 3.5 and local["epsilon_mean"] == pytest.approx(2.375)
        assert {u.device_id: u.dp_epsilon for u in h.state.repo.round_updates(rid)} == {**reported, "edge_2": None}


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "lots"])
def test_an_update_reporting_a_nonsense_epsilon_is_refused_and_nothing_changes(tmp_path: Path, value: str) -> None:
    from qflare.fl.serialize import dump_arrays

    for h in make_harness(tmp_path):
        rid = h.open_round()
        before = h.snapshot()
        blob = dump_arrays(h.global_arrays(), {"num_examples": "10", "dp_epsilon": value})
        # Execute
        reply = h.post("edge_0", f"/v1/device/rounds/{rid}/update", blob)
        # Assert
        assert reply.status_code in (400, 422) and reply.json()["error"]["reason"] == "bad_dp_epsilon"
        assert h.snapshot() == before
