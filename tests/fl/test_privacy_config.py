"""``aggregation.privacy`` in global_config.yaml: bad values name the key; an impossible budget is refused."""

from __future__ import annotations

import pytest

from qflare.config import GlobalConfig, parse_config
from qflare.errors import ConfigError


@pytest.mark.parametrize(("privacy", "key"), [
    ({"mode": "central", "noise_multiplier": 1.0, "clip": 0}, "aggregation.privacy.clip"),
    ({"mode": "central", "noise_multiplier": 1.0, "clip": -0.5}, "aggregation.privacy.clip"),
    ({"mode": "central", "noise_multiplier": -1.0}, "aggregation.privacy.noise_multiplier"),
    ({"mode": "central", "noise_multiplier": 0}, "aggregation.privacy.noise_multiplier"),
    ({"mode": "central", "target_epsilon": 0}, "aggregation.privacy.target_epsilon"),
    ({"mode": "central", "noise_multiplier": 1.0, "delta": 1.5}, "aggregation.privacy.delta"),
    ({"mode": "central"}, "privacy.noise_multiplier or privacy.target_epsilon"),
    ({"mode": "sideways", "noise_multiplier": 1.0}, "aggregation.privacy.mode"),
])
def test_bad_privacy_values_name_the_key(privacy: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GlobalConfig, {"aggregation": {"privacy": privacy}})
    assert key in err.value.message


def test_budget_exceeded_by_the_planned_rounds_is_refused_at_load() -> None:
    data = {"rounds": {"total": 20, "fraction": 1.0},
            "aggregation": {"privacy": {"mode": "central", "noise_multiplier": 1.0, "target_epsilon": 3.0}}}
    with pytest.raises(ConfigError) as err:
        parse_config(GlobalConfig, data)
    assert "aggregation.privacy.target_epsilon" in err.value.message and "budget" in err.value.message


def test_a_budget_that_fits_loads() -> None:
    data = {"rounds": {"total": 5, "fraction": 0.5},
            "aggregation": {"privacy": {"mode": "central", "noise_multiplier": 2.0, "target_epsilon": 8.0}}}
    cfg = parse_config(GlobalConfig, data)
    assert cfg.aggregation.privacy.mode == "central"
    assert parse_config(GlobalConfig, {}).aggregation.privacy.mode == "none"
