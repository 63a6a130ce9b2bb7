"""Model-poisoning attacks: what each sends, and that the robust rules hold against the crude ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.aggregate import fedavg
from qflare.fl.attacks import (
    ATTACKS,
    alie_z,
    flip_labels,
    gaussian_noise,
    inflate_num_examples,
    inner_product_manipulation,
    little_is_enough,
    scale_update,
    sign_flip,
)
from qflare.fl.influence import cap_round_num_examples
from qflare.fl.robust import krum, median, norm_bound
from qflare.types import NDArrays


def _w(*values: float) -> NDArrays:
    return {"w": np.array(values, np.float32)}


def test_sign_flip_negates_the_step_around_the_reference() -> None:
    # Execute
    out = sign_flip(_w(3.0, 1.0), reference=_w(1.0, 1.0), scale=2.0)

    # Assert: step (2, 0) -> (-4, 0), plus the reference
    np.testing.assert_allclose(out["w"], [-3.0, 1.0])
    assert out["w"].dtype == np.float32


def test_scale_update_boosts_the_delta() -> None:
    # Execute / Assert
    np.testing.assert_allclose(scale_update(_w(0.5, -1.0), factor=10.0)["w"], [5.0, -10.0])


def test_gaussian_noise_is_reproducible_and_can_replace_the_step() -> None:
    # Execute
    a = gaussian_noise(_w(0.0, 0.0, 0.0), sigma=2.0, rng=np.random.default_rng(7))
    b = gaussian_noise(_w(0.0, 0.0, 0.0), sigma=2.0, rng=np.random.default_rng(7))
    pure = gaussian_noise(_w(1e6, 1e6, 1e6), sigma=1.0, rng=np.random.default_rng(7), replace=True)

    # Assert
    np.testing.assert_array_equal(a["w"], b["w"])
    assert np.all(np.abs(pure["w"]) < 10)


def test_flip_labels_maps_y_to_c_minus_one_minus_y() -> None:
    # Execute
    out = flip_labels(np.array([0, 1, 9, 4], np.int64), num_classes=10)

    # Assert
    np.testing.assert_array_equal(out, [9, 8, 0, 5])
    with pytest.raises(ConfigError):
        flip_labels(np.array([10]), num_classes=10)


def test_inflate_num_examples() -> None:
    # Execute / Assert
    assert inflate_num_examples(120, factor=100.0) == 12_000
    assert inflate_num_examples(10**6, factor=100.0) == 10_000_000


@pytest.mark.parametrize(("n", "f", "p"), [(10, 2, 0.6), (50, 24, 0.96), (50, 12, 0.72)])
def test_alie_z_follows_the_papers_formula(n: int, f: int, p: float) -> None:
    # Prepare: s = floor(n/2 + 1) - f; z = Phi^-1((n - s) / n)
    s = math.floor(n / 2 + 1) - f
    assert (n - s) / n == pytest.approx(p)

    # Execute
    z = alie_z(n, f)

    # Assert: Phi(z) = p, checked with erf
    assert 0.5 * (1 + math.erf(z / math.sqrt(2))) == pytest.approx(p)


def test_alie_sends_mean_plus_z_std_and_slips_through_the_median() -> None:
    # Prepare: honest steps in one coordinate: 1, 2, 3, 4 (mean 2.5, std sqrt(1.25))
    honest = [_w(v) for v in (1.0, 2.0, 3.0, 4.0)]

    # Execute
    evil = little_is_enough(honest, n=6, f=2, z=1.0)
    aggregate = median([*((h, 1) for h in honest), (evil, 1), (evil, 1)])

    # Assert: the attack (3.618) is inside the honest range, yet moves the median from 2.5 to
    # (3 + 3.618) / 2: sorted 1, 2, 3, 3.618, 3.618, 4
    shifted = 2.5 + math.sqrt(1.25)
    assert float(evil["w"][0]) == pytest.approx(shifted, rel=1e-6)
    assert float(aggregate["w"][0]) == pytest.approx((3 + shifted) / 2, rel=1e-6)


def test_ipm_sends_minus_epsilon_times_the_honest_mean() -> None:
    # Prepare
    honest = [_w(1.0, 2.0), _w(3.0, 4.0)]

    # Execute
    evil = inner_product_manipulation(honest, epsilon=0.5)

    # Assert: mean (2, 3) -> (-1, -1.5); the inner product with the honest mean is negative
    np.testing.assert_allclose(evil["w"], [-1.0, -1.5])
    assert float(np.dot(evil["w"], [2.0, 3.0])) < 0


def test_robust_rules_resist_a_boosted_update_that_steers_fedavg() -> None:
    # Prepare: four honest deltas near (1, 1) and one boosted sign-flipped delta with an inflated count
    rng = np.random.default_rng(0)
    honest = [_w(*(1 + rng.normal(scale=0.05, size=2))) for _ in range(4)]
    evil = scale_update(sign_flip(honest[0]), factor=100.0)
    results = [*((h, 100) for h in honest), (evil, inflate_num_examples(100))]

    capped = cap_round_num_examples([n for _, n in results], median_multiple=1.0)

    # Execute
    plain = fedavg(results)
    bounded_only = norm_bound(results, median_multiple=1.0)
    defended = {
        "krum": krum(results, f=1),
        "median": median(results),
        "norm-bound, capped counts": norm_bound(
            [(u, c) for (u, _), c in zip(results, capped, strict=True)], median_multiple=1.0
        ),
    }

    # Assert: FedAvg goes the wrong way, and so does norm-bound alone (the inflated count still
    # gives the clipped attacker 96% of the weight); the robust rules, and norm-bound over capped
    # counts, keep both coordinates positive
    assert np.all(plain["w"] < 0)
    assert np.all(bounded_only["w"] < 0)
    for name, out in defended.items():
        assert np.all(out["w"] > 0), name


def test_registry_kinds() -> None:
    # Assert
    assert {name: a.kind for name, a in ATTACKS.items()} == {
        "sign-flip": "update",
        "scale": "update",
        "gaussian": "update",
        "label-flip": "labels",
        "inflate-count": "num_examples",
        "alie": "colluding",
        "ipm": "colluding",
    }


@pytest.mark.parametrize(("n", "f"), [(1, 0), (10, 0), (10, 10)])
def test_alie_refuses_impossible_parameters(n: int, f: int) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        alie_z(n, f)
    assert info.value.reason == "invalid_attack_params"
