"""Strategies: the registry, FedAvg streaming, and the buffered default for other rules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.aggregate import BufferedAccumulator, FedAvgAccumulator
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import FedAvg, Strategy, get_strategy
from qflare.types import NDArrays


class _Median(Strategy):
    """A rule that needs all updates at once (what Krum or the median will look like)."""

    name = "median"

    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        names = list(results[0][0])
        return {n: np.median(np.stack([a[n] for a, _ in results]), axis=0).astype(np.float32) for n in names}


def test_get_strategy() -> None:
    # Execute
    strategy = get_strategy("fedavg")

    # Assert
    assert isinstance(strategy, FedAvg)
    assert isinstance(strategy.accumulator(ModelSpec.from_arrays({"w": np.zeros(2, np.float32)})), FedAvgAccumulator)


def test_unknown_strategy() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        get_strategy("no-such-rule")
    assert info.value.reason == "unknown_strategy"


def test_a_non_streaming_rule_gets_a_buffered_accumulator(small_arrays: dict[str, np.ndarray]) -> None:
    # Prepare
    strategy = _Median()
    acc = strategy.accumulator(ModelSpec.from_arrays(small_arrays))
    updates = [{k: v + shift for k, v in small_arrays.items()} for shift in (0.0, 1.0, 100.0)]

    # Execute
    for u in updates:
        acc.add(u, 1)
    out = acc.result()

    # Assert: the median ignores the outlying update, where FedAvg would not
    assert isinstance(acc, BufferedAccumulator)
    np.testing.assert_allclose(out["bias"], small_arrays["bias"] + 1.0, rtol=1e-6)
    assert not np.allclose(FedAvg().aggregate([(u, 1) for u in updates])["bias"], out["bias"])
