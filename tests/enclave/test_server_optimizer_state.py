"""Server optimizer state (FedAvgM momentum, FedAdam moments) across rounds and across restarts: inside the
enclave (sealed with the model it belongs to) and in process (persisted next to the server's state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.config import EnclaveConfig
from qflare.errors import EnclaveError
from qflare.fl.serialize import load_arrays
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import get_strategy
from qflare.server.aggregation import InProcessAggregator
from tests.enclave.conftest import validate_bytes

from .conftest import AggregatorFactory, make_envelope, make_update

RULES = [("fedavgm", {"lr": 1.0, "momentum": 0.9}), ("fedadam", {"eta": 0.1})]


def _updates(round_id: int) -> list[bytes]:
    return [make_update(10 * round_id + i, num_examples=5 + i) for i in range(3)]


def _inprocess_run(rule: str, params: dict, base: bytes, spec: ModelSpec, rounds: int,
                   state_dir: Path | None = None, restart_after: int | None = None) -> list[bytes]:
    """Models of ``rounds`` in-process rounds (one aggregator for all, or a new one after ``restart_after``)."""
    def start() -> InProcessAggregator:
        return InProcessAggregator(get_strategy(rule, **params), state_dir=state_dir)

    agg, models, model = start(), [], base
    for r in range(1, rounds + 1):
        agg.begin_round(r, model, spec)
        for blob in _updates(r):
            agg.accumulate(validate_bytes(agg, r, blob))
        model = agg.finalize(r)
        models.append(model)
        if r == restart_after:
            agg = start()  # a restarted server: a new process, its state directory kept
    return models


def _enclave_run(start_aggregator: AggregatorFactory, work: Path, config: EnclaveConfig, device: SigningKey,
                 base: bytes, spec: ModelSpec, rounds: range, model: bytes) -> list[bytes]:
    backend = start_aggregator(work, config=config)
    kem = backend.public_keys().kem
    models = []
    for r in rounds:
        backend.begin_round(r, model, spec)
        for i, blob in enumerate(_updates(r)):
            backend.accumulate(validate_bytes(backend, r, make_envelope(device, kem, blob, round_id=r,
                                                                        device_id=f"d{i}")))
        model = backend.finalize(r)
        models.append(model)
    backend.close()
    return models


@pytest.mark.parametrize("rule, params", RULES)
def test_optimizer_state_carries_across_rounds_in_process_and_across_a_restart(
    tmp_path: Path, rule: str, params: dict, base_model: bytes, spec: ModelSpec
) -> None:
    # Prepare / Execute: three rounds straight, and three with the server restarted after round 2
    straight = _inprocess_run(rule, params, base_model, spec, 3)
    restarted = _inprocess_run(rule, params, base_model, spec, 3, state_dir=tmp_path / "opt", restart_after=2)
    forgetful = _inprocess_run(rule, params, base_model, spec, 3, restart_after=2)  # no state dir: lost

    # Assert: the restarted server resumes the momentum/moments; without a state directory it starts over
    assert restarted == straight
    assert forgetful[:2] == straight[:2] and forgetful[2] != straight[2]


@pytest.mark.parametrize("rule, params", RULES)
def test_enclave_keeps_optimizer_state_across_rounds_and_a_restart(
    tmp_path: Path, start_aggregator: AggregatorFactory, device_key: SigningKey, rule: str, params: dict,
    base_model: bytes, spec: ModelSpec
) -> None:
    # Prepare
    config = EnclaveConfig(aggregation_rule=rule, aggregation_params=params)
    expected = _inprocess_run(rule, params, base_model, spec, 3)

    # Execute: rounds 1-2 in one enclave process, round 3 in a new one over the same sealed state
    first = _enclave_run(start_aggregator, tmp_path / "e", config, device_key, base_model, spec, range(1, 3),
                         base_model)
    second = _enclave_run(start_aggregator, tmp_path / "e", config, device_key, base_model, spec, range(3, 4),
                          first[-1])

    # Assert: the same models as one uninterrupted in-process run (momentum kept between rounds and restarts)
    got = [load_arrays(m)[0] for m in first + second]
    want = [load_arrays(m)[0] for m in expected]
    for g, w in zip(got, want, strict=True):
        for name in w:
            np.testing.assert_array_equal(g[name], w[name])


def test_enclave_refuses_a_round_whose_optimizer_state_the_host_deleted(
    tmp_path: Path, start_aggregator: AggregatorFactory, device_key: SigningKey, base_model: bytes, spec: ModelSpec
) -> None:
    # Prepare
    config = EnclaveConfig(aggregation_rule="fedavgm", aggregation_params={"momentum": 0.9})
    models = _enclave_run(start_aggregator, tmp_path / "e", config, device_key, base_model, spec, range(1, 2),
                          base_model)
    sealed = list((tmp_path / "e" / "state").glob("optimizer-*.sealed"))
    for path in sealed:
        path.unlink()

    # Execute
    backend = start_aggregator(tmp_path / "e", config=config)
    with pytest.raises(EnclaveError) as err:
        backend.begin_round(2, models[0], spec)

    # Assert: a silent reset of the momentum would be the host's choice, not the enclave's
    assert len(sealed) == 1
    assert err.value.reason == "enclave_state_missing"
