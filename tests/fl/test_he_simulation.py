"""CKKS in the in-process simulation: the same accuracy as plaintext FedAvg, and what it costs."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError
from qflare.fl.he import make_context
from qflare.fl.simulation import run_inprocess
from qflare.fl.strategies import FedAvg
from qflare.fl.train import TrainConfig

FAST_DIGITS = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)


@pytest.mark.slow
def test_ckks_rounds_match_plaintext_fedavg() -> None:
    # Execute: the same seeded run twice, the second with every update encrypted and summed blind
    plain = run_inprocess("digits", 4, 3, seed=0, partition="iid", train_config=FAST_DIGITS)
    ckks = run_inprocess("digits", 4, 3, seed=0, partition="iid", train_config=FAST_DIGITS, he_context=make_context())
    # Assert: accuracy within 0.5 points each round (CKKS's error is ~1e-7 of a weight); costs reported
    for p, c in zip(plain, ckks, strict=True):
        assert abs(p.metrics["accuracy"] - c.metrics["accuracy"]) <= 0.005
        assert c.metrics["loss"] == pytest.approx(p.metrics["loss"], rel=1e-3)
        assert c.he is not None and p.he is None
        assert c.he["plaintext_bytes_up"] == p.update_bytes and c.update_bytes == c.he["bytes_up"]
        assert c.he["bytes_up"] > 10 * c.he["plaintext_bytes_up"]  # ciphertexts are large
        assert c.he["bytes_down"] > 0 and c.he["encrypt_seconds"] > 0 and c.he["sum_seconds"] > 0


def test_ckks_refuses_rules_it_cannot_run() -> None:
    with pytest.raises(ConfigError) as err:
        run_inprocess("digits", 2, 1, strategy=FedAvg(), he_context=object())
    assert "CKKS" in err.value.message
