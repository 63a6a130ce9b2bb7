"""Model poisoning for simulations: which devices, what they send, and the refusal outside simulations."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.poisoning import POISONING_KINDS, Poisoner, choose_malicious, require_simulation

BASE = {"w": np.zeros(4, dtype=np.float32)}
HONEST = {"w": np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)}
OTHERS = [
    {"w": np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)},
    {"w": np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)},
]


def test_the_malicious_devices_depend_on_the_seed_alone() -> None:
    ids = [f"edge_{i:02d}" for i in range(20)]
    chosen = choose_malicious(ids, 0.3, seed=7)
    assert len(chosen) == 6 and chosen == choose_malicious(ids, 0.3, seed=7)
    assert list(chosen) == sorted(chosen) and set(chosen) <= set(ids)
    assert chosen != choose_malicious(ids, 0.3, seed=8)
    assert choose_malicious(ids, 0.0, seed=7) == ()
    with pytest.raises(ConfigError):
        choose_malicious(ids, 1.5, seed=7)


@pytest.mark.parametrize(
    ("kind", "params", "expected", "claimed"),
    [
        ("sign-flip", {}, [-1.0] * 4, 10),
        ("scaling", {"factor": 5}, [5.0] * 4, 10),
        ("label-flip", {}, [1.0] * 4, 10),
        ("sample-inflation", {"factor": 100}, [-1.0] * 4, 1000),
        ("ipm", {"epsilon": 0.5}, [-1.0, -1.0, -1.0, -1.0], 10),  # -0.5 x mean of the honest [2, 2, 2, 2]
        ("alie", {"z": 1.0}, [3.0, 2.0, 3.0, 4.0], 10),  # mean + std over the two honest updates
    ],
)
def test_each_attack_sends_what_its_paper_says(kind: str, params: dict, expected: list[float], claimed: int) -> None:
    poisoner = Poisoner(kind, params, num_classes=10)
    out, n = poisoner.poison_update(HONEST, 10, reference=BASE, rng=np.random.default_rng(0), honest=OTHERS)
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    assert n == claimed and out["w"].dtype == np.float32


def test_gaussian_is_reproducible_from_the_rng() -> None:
    p = Poisoner("gaussian", {"sigma": 2.0})
    a, _ = p.poison_update(HONEST, 1, reference=BASE, rng=np.random.default_rng(3))
    b, _ = p.poison_update(HONEST, 1, reference=BASE, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.allclose(a["w"], HONEST["w"])


def test_label_flip_flips_and_other_kinds_leave_the_labels() -> None:
    labels = np.array([0, 3, 9])
    assert Poisoner("label-flip", num_classes=10).poison_labels(labels).tolist() == [9, 6, 0]
    assert Poisoner("scaling").poison_labels(labels) is labels


@pytest.mark.parametrize(
    ("kind", "params", "num_classes"),
    [("nope", {}, None), ("scaling", {"scale": 2}, None), ("label-flip", {}, None), ("alie", {"n": 5, "f": 0}, None)],
)
def test_a_bad_attack_is_a_config_error(kind: str, params: dict, num_classes: int | None) -> None:
    with pytest.raises(ConfigError):
        Poisoner(kind, params, num_classes=num_classes)


def test_colluding_attacks_need_the_honest_updates() -> None:
    assert Poisoner("alie", {"n": 20, "f": 6}).colluding and not Poisoner("scaling").colluding
    with pytest.raises(ConfigError):
        Poisoner("ipm").poison_update(HONEST, 1, reference=BASE, rng=np.random.default_rng(0))


def test_the_hook_is_refused_without_the_simulation_flag() -> None:
    with pytest.raises(ConfigError) as info:
        require_simulation({})
    assert info.value.reason == "simulation_attack_refused"
    require_simulation({"QFLARE_SIMULATION": "1"})
    assert set(POISONING_KINDS) == {"sign-flip", "scaling", "gaussian", "label-flip", "sample-inflation", "alie", "ipm"}
