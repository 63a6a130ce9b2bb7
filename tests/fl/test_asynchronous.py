"""FedBuff with staleness weights: publication every K updates, refusals that change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError, NotFound, UpdateRejected
from qflare.fl.asynchronous import AsyncConfig, FedBuffServer, staleness_weight


def _arr(x: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), x, dtype=np.float32)}


def test_staleness_weight_is_polynomial() -> None:
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(5, 0.0) == 1.0


def test_publishes_every_buffer_updates_with_weighted_mean_of_deltas() -> None:
    # Prepare
    published: list[int] = []
    server = FedBuffServer(initial=_arr(0.0), config=AsyncConfig(buffer=2, staleness_exponent=1.0),
                           on_publish=lambda v, _: published.append(v))

    # Execute: two fresh updates -> v1; then one on v0 (staleness 1, weight 1/2) and one on v1
    server.submit("a", 0, _arr(1.0), 1)
    assert server.version == 0
    rec = server.submit("b", 0, _arr(3.0), 1)
    stale = server.submit("c", 0, _arr(2.0), 1)
    server.submit("d", 1, _arr(4.0), 1)

    # Assert
    assert rec.published == 1 and published == [1, 2]
    assert stale.staleness == 1 and stale.weight == pytest.approx(0.5)
    np.testing.assert_allclose(server.model(1)["w"], 2.0)
    # v2 = v1 + (0.5 * (2 - 0) + 1 * (4 - 2)) / 1.5
    np.testing.assert_allclose(server.model()["w"], 2.0 + 3.0 / 1.5, rtol=1e-6)


def test_too_stale_update_is_refused_and_nothing_changes() -> None:
    # Prepare: versions 0..3 with max_staleness 1
    server = FedBuffServer(initial=_arr(0.0), config=AsyncConfig(buffer=1, max_staleness=1))
    for v in range(3):
        server.submit("a", v, _arr(float(v + 1)), 1)
    before = (server.version, server.model().copy(), len(server.accepted), len(server._deltas))

    # Execute / Assert
    with pytest.raises(UpdateRejected) as err:
        server.submit("late", 1, _arr(9.0), 1)
    assert err.value.reason == "too_stale" and "2 versions old" in err.value.message
    assert (server.version, len(server.accepted), len(server._deltas)) == (before[0], before[2], before[3])
    np.testing.assert_array_equal(server.model()["w"], before[1]["w"])
    assert server.refused == {"too_stale": 1}


@pytest.mark.parametrize("version", [5, -1])
def test_update_for_a_version_that_never_existed_is_refused(version: int) -> None:
    server = FedBuffServer(initial=_arr(0.0), config=AsyncConfig(buffer=2))
    with pytest.raises(NotFound) as err:
        server.submit("a", version, _arr(1.0), 1)
    assert err.value.reason == "unknown_model_version"
    assert server.version == 0 and not server.accepted and not server._deltas


def test_buffer_larger_than_devices_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        AsyncConfig(buffer=11).check(10)
    assert err.value.reason == "buffer_exceeds_devices"
    AsyncConfig(buffer=10).check(10)


def test_median_buffer_ignores_an_outlier() -> None:
    server = FedBuffServer(initial=_arr(0.0), config=AsyncConfig(buffer=3, rule="median"))
    for x in (1.0, 1.2, 1000.0):
        server.submit("a", 0, _arr(x), 1)
    np.testing.assert_allclose(server.model()["w"], 1.2, rtol=1e-6)


def test_norm_bound_buffer_clips_deltas() -> None:
    server = FedBuffServer(initial=_arr(0.0), config=AsyncConfig(buffer=1, rule="norm-bound", max_delta_norm=1.0))
    server.submit("a", 0, _arr(10.0), 1)
    assert float(np.linalg.norm(server.model()["w"])) == pytest.approx(1.0, rel=1e-5)
