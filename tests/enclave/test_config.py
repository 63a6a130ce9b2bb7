"""The measured enclave configuration: strict parsing, canonical bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.enclave.config import EnclaveConfig, load_config
from qflare.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_committed_config_parses_and_is_the_default() -> None:
    # Prepare / Execute
    config = load_config(REPO / "enclaves" / "enclave_config.json")

    # Assert
    assert config == EnclaveConfig()


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    # Prepare
    config = EnclaveConfig(isv_svn=7, debug=True, max_update_norm=2.5, allowed_key_sources=("hybrid",))

    # Execute
    again = load_config(config.write(tmp_path / "c.json"))

    # Assert
    assert again == config
    assert again.canonical_json() == config.canonical_json()


@pytest.mark.parametrize(
    "change",
    [
        {"isv_svn": -1},
        {"isv_svn": 70000},
        {"isv_prod_id": True},
        {"debug": "yes"},
        {"max_update_norm": 0},
        {"max_update_norm": float("inf")},
        {"checkpoint_every": 0},
        {"update_path_regex": "^/v1/(?P<x>.*)$"},
        {"update_path_regex": "("},
        {"allowed_key_sources": ()},
        {"allowed_key_sources": ("telepathy",)},
    ],
)
def test_bad_values_are_refused(change: dict[str, object]) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        EnclaveConfig(**change)  # type: ignore[arg-type]
    assert err.value.reason == "invalid_config"


def test_unknown_keys_and_wrong_format_are_refused() -> None:
    # Prepare
    doc = EnclaveConfig().to_dict()

    # Execute / Assert
    with pytest.raises(ConfigError, match="unknown keys"):
        EnclaveConfig.from_dict({**doc, "max_update_nrom": 1.0})
    with pytest.raises(ConfigError, match="format"):
        EnclaveConfig.from_dict({**doc, "format": "other/1"})
    with pytest.raises(ConfigError):
        EnclaveConfig.from_json(b"{not json")


def test_update_path_round_matches_only_update_paths() -> None:
    # Prepare
    config = EnclaveConfig()

    # Execute / Assert
    assert config.update_path_round("/v1/device/rounds/12/update") == 12
    assert config.update_path_round("/v1/device/task") is None
    assert config.update_path_round("/v1/device/rounds/12/update/x") is None


def test_every_spelling_of_an_upload_target_is_an_upload_path() -> None:
    # A signed target with a query or percent-encoding must not pass for a small request (whose payload
    # open_request hands to the host).
    from qflare.enclave.config import EnclaveConfig

    cfg = EnclaveConfig()
    for target in ("/v1/device/rounds/5/update", "/v1/device/rounds/5/update?x=1", "/v1/device/rounds/%35/update",
                   "/v1/device/rounds/5/%75pdate?"):
        assert cfg.update_path_round(target) == 5, target
    assert cfg.update_path_round("/v1/device/task?x=/v1/device/rounds/5/update") is None


def test_central_dp_parameters_are_measured_validated_and_canonical() -> None:
    from qflare.enclave.measurement import measure

    plain = EnclaveConfig()
    dp = EnclaveConfig(privacy={"mode": "central", "noise_multiplier": 2, "clip": 1})
    assert dp.privacy == {"adaptive": False, "clip": 1.0, "mode": "central", "noise_multiplier": 2.0}
    assert "privacy" not in plain.to_dict()  # configs without DP keep their measurement
    assert EnclaveConfig.from_json(dp.canonical_json()) == dp
    runtime = {"python": "x"}
    assert measure(dp, runtime=runtime).value != measure(plain, runtime=runtime).value
    noisier = EnclaveConfig(privacy={"mode": "central", "noise_multiplier": 1.0, "clip": 1.0})
    assert measure(noisier, runtime=runtime).value != measure(dp, runtime=runtime).value
    for bad in ({"mode": "central", "noise_multiplier": 0, "clip": 1.0}, {"mode": "central", "clip": 1.0},
                {"mode": "central", "noise_multiplier": 1.0, "clip": -1.0}, {"mode": "local", "noise_multiplier": 1.0},
                {"mode": "central", "noise_multiplier": 1.0, "clip": 1.0, "seed": 3},
                {"mode": "central", "noise_multiplier": True, "clip": 1.0}):
        with pytest.raises(ConfigError) as err:
            EnclaveConfig(privacy=bad)
        assert err.value.reason == "invalid_config" and "privacy" in err.value.message
