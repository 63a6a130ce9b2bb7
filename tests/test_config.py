"""Configuration files: clear errors naming the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from qflare.config import GlobalConfig, dump_yaml, load_device_config, load_global_config
from qflare.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    dump_yaml(GlobalConfig(), path)
    assert load_global_config(path) == GlobalConfig()


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_global_config(root / "global_config.yaml").task == "digits"
    assert load_device_config(root / "device_config.yaml").device_id == "edge_01"


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "rounds:\n  min_quorum: three\n")
    with pytest.raises(ConfigError) as info:
        load_global_config(path)
    assert "rounds.min_quorum" in info.value.message and "three" in info.value.message


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.epoch: unknown key"):
        load_global_config(_write(tmp_path, "training:\n  epoch: 3\n"))


def test_out_of_range_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rounds\.fraction"):
        load_global_config(_write(tmp_path, "rounds:\n  fraction: 1.5\n"))


def test_quorum_larger_than_min_devices_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_quorum must not exceed min_devices"):
        load_global_config(_write(tmp_path, "rounds:\n  min_devices: 2\n  min_quorum: 5\n"))


def test_device_config_requires_device_id_and_checks_partition(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device_id: Field required"):
        load_device_config(_write(tmp_path, "server_url: http://127.0.0.1:1\n"))
    with pytest.raises(ConfigError, match="partition_index must be smaller"):
        load_device_config(_write(tmp_path, "device_id: a\ndata:\n  num_partitions: 2\n  partition_index: 2\n"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "a: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_global_config(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_global_config(tmp_path / "nope.yaml")
    assert info.value.reason == "config_unreadable"


def test_the_environment_is_read_in_one_place() -> None:
    # Every os.environ read in src/qflare outside qflare.environment is either a child-process environment
    # being built or the multi-worker spec written for the workers (which read it through qflare.environment);
    # nothing else reads the environment.
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "qflare"
    reads = []
    for path in src.rglob("*.py"):
        if path.name == "environment.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            exempt = "env = {" in line or "SPEC_ENV" in line  # a child's environment; the worker spec
            if re.search(r"os\.environ\.get|os\.getenv|os\.environ\[", line) and not exempt:
                reads.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert reads == []


def test_production_refuses_the_demo_only_bypasses_naming_each() -> None:
    from qflare.config import GlobalConfig

    demo = GlobalConfig.model_validate({"enclave": {"backend": "simulated"}})
    assert any("simulated" in b for b in demo.demo_bypasses())
    with pytest.raises(ValidationError) as info:
        GlobalConfig.model_validate({"server": {"deployment": "production", "admin_token": "x" * 32},
                                     "enclave": {"backend": "none"}})
    text = str(info.value)
    assert "enclave.backend: none" in text and "server.admin_token" in text
    ok = GlobalConfig.model_validate({"server": {"deployment": "production"}, "enclave": {"backend": "gramine"}})
    assert ok.demo_bypasses() == []
