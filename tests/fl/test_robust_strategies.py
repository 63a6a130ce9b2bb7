"""Robust strategies: registry, parameters, the deployed accumulator form, and the default's bounds."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.config import AggregationConfig, GlobalConfig, parse_config
from qflare.enclave.config import EnclaveConfig
from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import BufferedAccumulator, fedavg
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import DEFAULT_STRATEGY, STRATEGIES, FedAvg, get_strategy
from qflare.fl.strategies.robust import bounded_fedavg_with_outcome
from qflare.types import NDArrays

ROBUST = ["median", "trimmed-mean", "krum", "multi-krum", "bulyan", "centered-clipping", "norm-bound"]


def _honest(n: int, d: int = 50, seed: int = 0) -> tuple[NDArrays, list[NDArrays]]:
    rng = np.random.default_rng(seed)
    base = {"w": rng.normal(size=(d,)).astype(np.float32), "b": np.zeros(5, np.float32)}
    direction = rng.normal(size=d)
    ups = []
    for _ in range(n):
        step = 0.1 * (direction + 0.3 * rng.normal(size=d))
        ups.append({"w": (base["w"] + step).astype(np.float32), "b": (base["b"] + 0.01).astype(np.float32)})
    return base, ups


def _run(name: str, base: NDArrays, results: list[tuple[NDArrays, int]], **params: object) -> NDArrays:
    acc = get_strategy(name, **params).accumulator(ModelSpec.from_arrays(base), reference=base)
    for arrays, n in results:
        acc.add(arrays, n)
    return acc.result()


def _dist(a: NDArrays, b: NDArrays) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_registry_has_every_rule() -> None:
    from qflare.fl.optimizers import SERVER_OPTIMIZERS

    assert set(ROBUST) | {"fedavg", "bounded-fedavg", "fltrust"} | set(SERVER_OPTIMIZERS) == set(STRATEGIES)
    assert DEFAULT_STRATEGY == "bounded-fedavg"
    assert isinstance(get_strategy("fedavg"), FedAvg)


@pytest.mark.parametrize("name", ROBUST + ["bounded-fedavg"])
def test_each_rule_ignores_one_huge_update(name: str) -> None:
    # Prepare: 8 honest updates and one 10^6 x step
    base, ups = _honest(8)
    honest = fedavg([(u, 100) for u in ups])
    bad = {k: (base[k] + 1e6 * (ups[0][k] - base[k])).astype(np.float32) for k in base}

    # Execute
    params = {"beta": 0.2} if name == "trimmed-mean" else {}  # the default 0.1 trims nothing at n=9
    out = _run(name, base, [(u, 100) for u in ups] + [(bad, 100)], **params)

    # Assert: the result stays within an honest step of the honest average
    honest_step = min(_dist(u, base) for u in ups)
    assert _dist(out, honest) <= honest_step, name
    assert isinstance(get_strategy(name).accumulator(ModelSpec.from_arrays(base), reference=base), BufferedAccumulator)


def test_too_few_updates_at_close() -> None:
    base, ups = _honest(4)
    with pytest.raises(AggregationError) as info:
        _run("krum", base, [(u, 1) for u in ups], f=1)  # needs 2f + 3 = 5
    assert info.value.reason == "too_few_updates"


@pytest.mark.parametrize(
    ("rule", "params", "key"),
    [
        ("trimmed-mean", {"beta": 0.5}, "aggregation.beta"),
        ("krum", {"f": -1}, "aggregation.f"),
        ("krum", {"beta": 0.1}, "aggregation.beta"),
        ("multi-krum", {"m": 0}, "aggregation.m"),
        ("centered-clipping", {"tau": 0}, "aggregation.tau"),
        ("bounded-fedavg", {"norm_multiple": -1}, "aggregation.norm_multiple"),
        ("bounded-fedavg", {"f": 1}, "aggregation.f"),
        ("bounded-fedavg", {"max_share": 0.5}, "aggregation.max_share"),
        ("bounded-fedavg", {"min_class_agreement": 1.5}, "aggregation.min_class_agreement"),
        ("bounded-fedavg", {"min_class_agreement": -2}, "aggregation.min_class_agreement"),
        ("fedavg", {"f": 1}, "aggregation.f"),
    ],
)
def test_bad_params_are_config_errors_naming_the_key(rule: str, params: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_strategy(rule, **params)
    assert info.value.message.startswith(key)
    with pytest.raises(ConfigError) as at_load:
        parse_config(GlobalConfig, {"task": "digits", "aggregation": {"rule": rule, "params": params}})
    assert key in at_load.value.message
    with pytest.raises(ConfigError) as in_enclave:
        EnclaveConfig(aggregation_rule=rule, aggregation_params=params)
    assert key in in_enclave.value.message


def test_params_reach_the_enclave_measurement() -> None:
    a = EnclaveConfig(aggregation_rule="krum", aggregation_params={"f": 1})
    b = EnclaveConfig(aggregation_rule="krum", aggregation_params={"f": 2})
    assert a.canonical_json() != b.canonical_json()
    assert EnclaveConfig.from_json(b.canonical_json()) == b
    with pytest.raises(ConfigError):
        EnclaveConfig(aggregation_rule="krum", aggregation_params={"f": "two"})  # type: ignore[dict-item]
    assert AggregationConfig(rule="krum", params={"f": 2}).params == {"f": 2}


def test_shipped_config_uses_the_bounded_default() -> None:
    from qflare.config import load_global_config

    assert load_global_config("configs/global_config.yaml").aggregation.rule == "bounded-fedavg"


# -- the two attacks of issue 9, replayed against the default ------------------------------------


def test_inflated_sample_count_moves_the_default_no_more_than_an_honest_update() -> None:
    # Prepare: 9 honest devices claim 100; one claims 10^7 with a (normal-sized) step of its choosing
    base, ups = _honest(9)
    honest = fedavg([(u, 100) for u in ups])
    honest_step = min(_dist(u, base) for u in ups)
    direction = {k: (base[k] - (ups[0][k] - base[k])).astype(np.float32) for k in base}  # the opposite way
    results = [(u, 100) for u in ups] + [(direction, 10_000_000)]

    # Execute
    default = _run(DEFAULT_STRATEGY, base, results)
    plain = fedavg(results)

    # Assert: plain FedAvg follows the attacker; the default stays within an honest step
    assert _dist(plain, direction) < 1e-3 * honest_step
    assert _dist(default, honest) <= honest_step
    print(f"inflated count: default {_dist(default, honest):.4f}, fedavg {_dist(plain, honest):.4f}, "
          f"honest step {honest_step:.4f}")


def test_million_x_norm_moves_the_default_no_more_than_an_honest_update() -> None:
    # Prepare: one device sends a step 10^6 x the normal norm, claiming the usual 100
    base, ups = _honest(9)
    honest = fedavg([(u, 100) for u in ups])
    honest_step = min(_dist(u, base) for u in ups)
    bad = {k: (base[k] + 1e6 * (ups[0][k] - base[k])).astype(np.float32) for k in base}
    results = [(u, 100) for u in ups] + [(bad, 100)]

    # Execute
    default = _run(DEFAULT_STRATEGY, base, results)
    plain = fedavg(results)

    # Assert
    assert _dist(plain, honest) > 1e4 * honest_step
    assert _dist(default, honest) <= honest_step
    print(f"10^6 x norm: default {_dist(default, honest):.4f}, fedavg {_dist(plain, honest):.1f}, "
          f"honest step {honest_step:.4f}")


def _group_attack(honest_claims: list[int], attackers: int, claim: int) -> tuple[NDArrays, NDArrays, NDArrays, list]:
    """Honest devices stepping along d, ``attackers`` devices claiming ``claim`` and stepping along -d."""
    base, ups = _honest(len(honest_claims), seed=3)
    flipped = [{k: (base[k] - (u[k] - base[k])).astype(np.float32) for k in base} for u in ups[:attackers]]
    results = [(u, n) for u, n in zip(ups, honest_claims, strict=True)] + [(f, claim) for f in flipped]
    honest = fedavg([(u, n) for u, n in zip(ups, honest_claims, strict=True)])
    return base, honest, fedavg([(u, 1) for u in ups]), results


def _along(out: NDArrays, base: NDArrays, honest: NDArrays) -> float:
    """Projection of the aggregate's step on the honest step, relative to the honest step (1 = honest)."""
    step = np.concatenate([(out[k] - base[k]).ravel() for k in sorted(base)]).astype(np.float64)
    good = np.concatenate([(honest[k] - base[k]).ravel() for k in sorted(base)]).astype(np.float64)
    return float(step @ good / (good @ good))


def test_thirty_percent_inflaters_cannot_outweigh_the_honest_devices() -> None:
    # Prepare: the digits table's case: 14 honest devices with 32..104 examples, 6 claiming 10^7 and
    # sending sign-flipped steps. Capping each claim at 3 x the (shifted) median left the 6 inflaters
    # 6 x 3 medians against ~14 honest ones: the old default stepped *against* the honest direction.
    claims = [72, 100, 85, 101, 44, 81, 74, 72, 57, 66, 32, 76, 85, 73]
    base, honest, _, results = _group_attack(claims, attackers=6, claim=10_000_000)

    # Execute
    # the old rule: the median cap alone, every update in the aggregate
    median_cap_only = bounded_fedavg_with_outcome(results, reference=base, max_share=1000.0,
                                                  exclude_flagged=False).arrays
    # the median cap alone with flagged steps left out: the flipped steps are opposed to the median step
    median_cap_second_pass = _run("bounded-fedavg", base, results, max_share=1000.0)
    default = _run(DEFAULT_STRATEGY, base, results)
    acc = get_strategy(DEFAULT_STRATEGY).accumulator(ModelSpec.from_arrays(base), reference=base)
    for arrays, n in results:
        acc.add(arrays, n)
    acc.result()

    # Assert: the old rule reverses the honest step; the default keeps it, and the 6 hold 6/20 of the weight
    assert _along(median_cap_only, base, honest) < 0
    assert _along(default, base, honest) > 0.3
    assert _along(median_cap_second_pass, base, honest) > 0.3
    assert acc.last_outcome is not None
    assert set(acc.last_outcome.flagged) >= set(range(14, 20))  # the inflated claims are flagged
    assert not set(acc.last_outcome.flagged) & set(range(14))  # equalised honest weights are not
    assert sum(acc.last_outcome.weights[14:]) == 0  # flagged: left out of the round's aggregate
    assert acc.last_outcome.verdicts()[14:] == ("excluded",) * 6
    # verdicts only (the aggregate before the flagged were left out): the 6 hold exactly their 6/20
    only = bounded_fedavg_with_outcome(results, reference=base, exclude_flagged=False)
    assert sum(only.weights[14:]) == pytest.approx(6 / 20)
    assert 0.3 < _along(only.arrays, base, honest) < _along(default, base, honest)


@pytest.mark.parametrize("attackers", [1, 3, 6, 9])
def test_any_group_of_attackers_holds_at_most_its_share_of_the_weight(attackers: int) -> None:
    # Prepare: honest claims spread 30..300, attackers claim 10^7 each
    honest_claims = [30 + 27 * i for i in range(20 - attackers)]
    base, _, _, results = _group_attack(honest_claims, attackers=attackers, claim=10_000_000)

    for share in (1.0, 1.5):
        acc = get_strategy("bounded-fedavg", max_share=share).accumulator(ModelSpec.from_arrays(base), reference=base)
        for arrays, n in results:
            acc.add(arrays, n)
        acc.result()
        assert acc.last_outcome is not None
        held = sum(acc.last_outcome.weights[len(honest_claims):])
        assert held <= min(1.0, share * attackers / 20) + 1e-9


def test_bounded_fedavg_equals_fedavg_on_honest_rounds() -> None:
    # Equal claims and steps well inside 2 x median: nothing is capped or clipped
    base, ups = _honest(6)
    results = [(u, 100) for u in ups]
    out = _run("bounded-fedavg", base, results)
    for k in base:
        np.testing.assert_allclose(out[k], fedavg(results)[k], rtol=1e-5, atol=1e-6)


def _verdicts(base: NDArrays, ups: list[NDArrays], **params: object) -> tuple[int, ...]:
    acc = get_strategy("bounded-fedavg", **params).accumulator(ModelSpec.from_arrays(base), reference=base)
    for u in ups:
        acc.add(u, 100)
    acc.result()
    assert acc.last_outcome is not None
    return acc.last_outcome.flagged


def _scaled_step(base: NDArrays, update: NDArrays, factor: float) -> NDArrays:
    return {k: (base[k] + factor * (update[k].astype(np.float64) - base[k])).astype(np.float32) for k in base}


def test_bounded_fedavg_flags_opposed_and_far_steps_but_not_merely_clipped_ones() -> None:
    # Prepare: 9 honest steps, then one sign-flipped, one 3x the norm (clipped at 2x the median norm, not
    # 2 x 2x beyond it) and one 10x
    base, ups = _honest(12, seed=3)
    attackers = [_scaled_step(base, ups[9], -1.0), _scaled_step(base, ups[10], 3.0), _scaled_step(base, ups[11], 10.0)]

    # Execute
    flagged = _verdicts(base, ups[:9] + attackers)

    # Assert: the opposed and the far one are verdicts; the 3x one is clipped but not flagged
    assert flagged == (9, 11)
    assert _verdicts(base, ups[:9] + attackers, outlier_multiple=1.0) == (9, 10, 11)  # every clipped step
    assert _verdicts(base, ups) == ()  # an honest round: no verdict


def test_bounded_fedavg_leaves_opposed_steps_out_of_the_rounds_aggregate_and_clips_far_ones() -> None:
    # Prepare: 9 honest steps, 2 sign-flipped at an ordinary norm (never clipped, only opposed), one 10x
    base, ups = _honest(12, seed=3)
    attackers = [_scaled_step(base, ups[9], -1.0), _scaled_step(base, ups[10], -1.0), _scaled_step(base, ups[11], 10.0)]
    results = [(u, 100) for u in ups[:9] + attackers]

    # Execute
    both = bounded_fedavg_with_outcome(results, reference=base)
    without = bounded_fedavg_with_outcome(results[:9] + results[11:], reference=base)
    only = bounded_fedavg_with_outcome(results, reference=base, exclude_flagged=False)

    # Assert: the aggregate is the rule over the updates without the two opposed ones (their own median norm
    # and weights); the far step is flagged and clipped, not left out (clipping already bounds it); the
    # verdicts are those of the first pass, and the left-out hold no weight
    assert both.flagged == only.flagged == (9, 10, 11)
    for k in base:
        np.testing.assert_array_equal(both.arrays[k], without.arrays[k])
    assert both.selected == (*range(9), 11) and both.weights[9:11] == (0.0, 0.0)
    assert sum(both.weights) == pytest.approx(1.0)
    assert both.verdicts()[9:] == ("excluded", "excluded", "clipped")
    assert only.verdicts()[9:] == ("accepted", "accepted", "clipped")
    assert both.scores == only.scores  # every update's step norm, the left-out ones' included
    honest = fedavg(results[:9])
    assert _dist(both.arrays, honest) < _dist(only.arrays, honest)


def test_bounded_fedavg_keeps_every_update_when_half_or_more_are_flagged() -> None:
    # Prepare: two steps along d, two shorter ones against it: the average still points along d, so the
    # two against it are opposed, and they are half of the round
    base = {"w": np.zeros(4, np.float32)}
    d = np.array([1.0, 0.5, 0.0, 0.0])
    results = [({"w": (s * d).astype(np.float32)}, 10) for s in (1.0, 1.0, -0.6, -0.6)]

    # Execute
    out = bounded_fedavg_with_outcome(results, reference=base)
    only = bounded_fedavg_with_outcome(results, reference=base, exclude_flagged=False)

    # Assert: flagged, but a second pass would rest on half of the updates: the first pass stands
    assert out.flagged == (2, 3)
    np.testing.assert_array_equal(out.arrays["w"], only.arrays["w"])
    np.testing.assert_allclose(out.arrays["w"], 0.2 * d, rtol=1e-6)
    assert out.selected == (0, 1, 2, 3)


def test_output_layer_is_the_last_matrix_with_its_bias_and_none_for_a_regressor() -> None:
    from qflare.fl.robust import output_layer
    from qflare.fl.tasks import get_task

    def spec(**shapes: tuple[int, ...]) -> ModelSpec:
        return ModelSpec.from_arrays({k.replace("_", "."): np.zeros(v, np.float32) for k, v in shapes.items()})

    assert output_layer(get_task("digits").model_spec()) == ("fc2.weight", "fc2.bias")
    assert output_layer(get_task("traffic").model_spec()) is None  # head.2.weight is (1, 32): one output
    assert output_layer(spec(a_weight=(4, 3), a_bias=(4,), out_weight=(3, 4))) == ("out.weight", None)
    assert output_layer(spec(out_weight=(3, 4), out_bias=(4,))) == ("out.weight", None)  # not its bias
    assert output_layer(spec(w=(5,), b=(5,))) is None
    ints = ModelSpec.from_arrays({"out.weight": np.zeros((3, 4), np.float32), "steps": np.zeros((2, 2), np.int64)})
    assert output_layer(ints) == ("out.weight", None)  # integer tensors are not layers


def test_class_agreement_hand_computed() -> None:
    from qflare.fl.robust import class_agreement

    # Prepare: two classes; rows (weights, then the bias as a last column) of three steps from zero
    base = {"out.weight": np.zeros((2, 1), np.float32), "out.bias": np.zeros(2, np.float32)}
    def step(rows: list[list[float]]) -> NDArrays:
        r = np.array(rows, np.float32)
        return {"out.weight": r[:, :1], "out.bias": r[:, 1]}
    results = [(step([[1, 0], [0, 1]]), 1), (step([[1, 0], [0, 1]]), 1), (step([[-1, 1], [1, -1]]), 1)]

    # Execute
    scores = class_agreement(results, reference=base, layer=("out.weight", "out.bias"))

    # Assert: the median rows are [1, 0] and [0, 1]; the third step's rows are each at cosine -1/sqrt(2)
    np.testing.assert_allclose(scores, [1.0, 1.0, -1 / np.sqrt(2)], rtol=1e-12)
    zero = class_agreement([(base, 1)] * 3, reference=base, layer=("out.weight", "out.bias"))
    assert zero.tolist() == [0.0, 0.0, 0.0]  # no step: a zero row counts 0, never NaN


def _classifier(n_honest: int, flippers: int, *, classes: int = 4, seed: int = 5) -> tuple[NDArrays, list[NDArrays]]:
    """Steps of a small classifier: the same hidden step for all; honest output rows move class c towards
    feature e_c (with noise), flippers' rows towards e_(C-1-c) and away from e_c, as cross-entropy on
    flipped labels does."""
    rng = np.random.default_rng(seed)
    base = {"hidden": rng.normal(size=(6, classes)).astype(np.float32),
            "out.weight": rng.normal(size=(classes, classes)).astype(np.float32),
            "out.bias": np.zeros(classes, np.float32)}
    hidden = rng.normal(size=(6, classes))
    ups = []
    for i in range(n_honest + flippers):
        target = np.eye(classes) if i < n_honest else np.eye(classes)[::-1] - np.eye(classes)
        rows = 0.1 * (target + 0.2 * rng.normal(size=(classes, classes)))
        ups.append({"hidden": (base["hidden"] + 0.5 * hidden).astype(np.float32),
                    "out.weight": (base["out.weight"] + rows).astype(np.float32),
                    "out.bias": (base["out.bias"] + 0.01 * rng.normal(size=classes)).astype(np.float32)})
    return base, ups


def test_bounded_fedavg_flags_and_leaves_out_a_label_flipper_by_its_output_layer() -> None:
    # Prepare: 7 honest devices and 2 whose output rows are permuted; their whole steps are not opposed
    base, ups = _classifier(7, 2)
    results = [(u, 100) for u in ups]

    # Execute
    out = bounded_fedavg_with_outcome(results, reference=base)
    off = bounded_fedavg_with_outcome(results, reference=base, min_class_agreement=-1.0)
    honest_only = bounded_fedavg_with_outcome(results[:7], reference=base)

    # Assert: flagged and left out; with the check off nothing is flagged; an honest round flags no one
    assert out.flagged == (7, 8) and out.verdicts()[7:] == ("excluded", "excluded")
    assert off.flagged == ()
    for k in base:
        np.testing.assert_array_equal(out.arrays[k], honest_only.arrays[k])
    assert honest_only.flagged == ()


def test_the_class_check_flags_a_low_outlier_not_a_round_whose_agreement_is_low_as_a_whole() -> None:
    from qflare.fl.robust import class_agreement

    # Prepare: output rows of pure noise (no class signal, as when colluders shift every coordinate's
    # median): several agreements fall below 0, none far below the others
    rng = np.random.default_rng(11)
    base = {"out.weight": np.zeros((4, 3), np.float32), "out.bias": np.zeros(4, np.float32)}
    ups = [{"out.weight": rng.normal(size=(4, 3)).astype(np.float32), "out.bias": rng.normal(size=4).astype(np.float32)}
           for _ in range(9)]
    results = [(u, 100) for u in ups]
    scores = class_agreement(results, reference=base, layer=("out.weight", "out.bias"))
    centre = np.median(scores)
    low = centre - 2.0 * 1.4826 * np.median(np.abs(scores - centre))

    # Execute
    out = bounded_fedavg_with_outcome(results, reference=base)
    off = bounded_fedavg_with_outcome(results, reference=base, min_class_agreement=-1.0)

    # Assert: below 0 is not enough; the class check adds exactly the scores below both 0 and the low line
    negative = {i for i in range(9) if scores[i] < 0}
    expected = {i for i in negative if scores[i] < low}
    assert len(negative) >= 2 and len(expected) < len(negative)
    assert set(out.flagged) - set(off.flagged) == expected - set(off.flagged)


def test_the_class_check_does_not_apply_to_a_single_output_regressor() -> None:
    # Prepare: the same steps, but the output layer has one row (a regressor): nothing to compare per class
    base, ups = _classifier(7, 2)
    base = {"hidden": base["hidden"], "head.weight": base["out.weight"][:1], "head.bias": base["out.bias"][:1]}
    ups = [{"hidden": u["hidden"], "head.weight": u["out.weight"][:1], "head.bias": u["out.bias"][:1]} for u in ups]

    # Execute
    out = bounded_fedavg_with_outcome([(u, 100) for u in ups], reference=base, min_class_agreement=1.0)

    # Assert: even the strictest threshold flags no one
    assert out.flagged == ()


@pytest.mark.parametrize("value", [1.01, -1.5, float("nan"), "0"])
def test_bounded_fedavg_refuses_a_class_agreement_outside_minus_one_to_one_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="aggregation.min_class_agreement") as info:
        get_strategy("bounded-fedavg", min_class_agreement=value)
    assert info.value.reason == "invalid_aggregation_params"
    with pytest.raises(ValueError, match="min_class_agreement"):
        AggregationConfig(rule="bounded-fedavg", params={"min_class_agreement": value})
    base, ups = _classifier(3, 0)
    if isinstance(value, float):
        with pytest.raises(ConfigError, match="aggregation.min_class_agreement"):
            bounded_fedavg_with_outcome([(u, 1) for u in ups], reference=base, min_class_agreement=value)


def test_opposed_steps_uses_the_cosine_margin_and_ignores_a_zero_direction() -> None:
    from qflare.fl.robust import OPPOSED_COSINE, opposed_steps

    direction = np.array([1.0, 0.0])
    angle = np.arccos(OPPOSED_COSINE)  # exactly at the margin: not opposed; a little past it: opposed
    steps = np.array([[1.0, 1.0], [0.0, 1.0], [np.cos(angle - 0.01), np.sin(angle - 0.01)],
                      [np.cos(angle + 0.01), np.sin(angle + 0.01)], [-1.0, 0.0]])
    assert OPPOSED_COSINE < 0
    assert opposed_steps(steps, direction) == (3, 4)
    assert opposed_steps(steps, np.zeros(2)) == ()
    assert opposed_steps(steps, direction, below=0.0) == (2, 3, 4)


@pytest.mark.parametrize("value", [0.5, -1, float("nan"), float("inf"), "2"])
def test_bounded_fedavg_refuses_an_outlier_multiple_below_one_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="aggregation.outlier_multiple") as info:
        get_strategy("bounded-fedavg", outlier_multiple=value)
    assert info.value.reason == "invalid_aggregation_params"
    with pytest.raises(ValueError, match="outlier_multiple"):
        AggregationConfig(rule="bounded-fedavg", params={"outlier_multiple": value})


def test_bounded_fedavg_needs_the_base_model() -> None:
    base, _ = _honest(2)
    with pytest.raises(AggregationError) as info:
        get_strategy("bounded-fedavg").accumulator(ModelSpec.from_arrays(base))
    assert info.value.reason == "missing_reference"


def test_enclave_round_checkpoint_restores_a_buffered_rule() -> None:
    from qflare.enclave.trusted.rounds import RoundState
    from qflare.fl.checks import ParsedUpdate

    base, ups = _honest(3)
    spec = ModelSpec.from_arrays(base)

    def state() -> RoundState:
        return RoundState(round_id=1, spec=spec, base_sha256="00" * 32, base=base, strategy=get_strategy("median"))

    first = state()
    for i, u in enumerate(ups):
        first.add(str(i), ParsedUpdate(u, 10, None))
    second = state()
    second.restore(*first.checkpoint())
    for k in base:
        np.testing.assert_array_equal(second.acc.result()[k], first.acc.result()[k])


@pytest.mark.parametrize("name", ["bounded-fedavg", "norm-bound", "centered-clipping", "krum"])
def test_a_finite_step_whose_float32_square_overflows_is_clipped_not_a_round_failure(name: str) -> None:
    # Prepare: one device sends finite float32 values of 1e25: their squares overflow float32 (max 3.4e38),
    # which made the round's step norms inf and the median-norm bound refuse the whole round
    base, ups = _honest(8)
    huge = {k: np.full_like(base[k], 1e25) for k in base}
    results = [(u, 100) for u in ups] + [(huge, 100)]

    # Execute
    out = _run(name, base, results)

    # Assert: the round aggregates and the huge step is clipped away or excluded
    honest = fedavg([(u, 100) for u in ups])
    assert _dist(out, honest) <= 2 * min(_dist(u, base) for u in ups), name


def test_median_step_hand_computed() -> None:
    from qflare.fl.robust import median_step

    odd = np.array([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]])
    np.testing.assert_array_equal(median_step(odd), [2.0, 0.0])
    even = np.array([[1.0, 0.0], [3.0, 2.0], [100.0, -4.0], [-7.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(median_step(even), [2.0, 0.5])  # the mean of the middle two
    assert median_step(even).dtype == np.float64
    np.testing.assert_array_equal(median_step(np.array([[3.0, -1.0]])), [3.0, -1.0])  # one row: itself
    assert median_step(np.zeros((0, 3))).tolist() == [0.0, 0.0, 0.0]  # no rows
    assert median_step(np.zeros((2, 0))).shape == (0,)  # no coordinates


def _flipper_round() -> tuple[NDArrays, list[tuple[NDArrays, int]]]:
    # 7 honest steps around (1, 0) with spread, and one sign flipper twice their size and off to one side:
    # -(2, 3). It pulls the mean to itself; the median it moves by one rank per coordinate.
    rng = np.random.default_rng(0)
    honest = np.array([1.0, 0.0]) + 0.3 * rng.normal(size=(7, 2))
    steps = np.vstack([honest, [[-2.0, -3.0]]])
    base = {"w": np.zeros(2, np.float32)}
    return base, [({"w": row.astype(np.float32)}, 100) for row in steps]


def test_the_median_step_catches_a_large_flipper_that_the_aggregate_does_not() -> None:
    from qflare.fl.robust import median_step, opposed_steps

    # Prepare
    base, results = _flipper_round()
    steps = np.stack([u["w"].astype(np.float64) for u, _ in results])
    mean = steps.mean(axis=0)

    # Execute
    against_mean = opposed_steps(steps, mean)
    against_median = opposed_steps(steps, median_step(steps))
    out = bounded_fedavg_with_outcome(results, reference=base)

    # Assert: against the mean (which holds the flipper's own step) it is not opposed; against the median it
    # is; bounded FedAvg flags it, leaves it out, and flags no honest step
    assert 7 not in against_mean
    assert against_median == (7,)
    assert out.flagged == (7,)
    assert out.selected == tuple(range(7)) and out.weights[7] == 0.0


def test_the_opposed_verdict_on_degenerate_rounds_does_not_crash_or_flag() -> None:
    base = {"w": np.zeros(3, np.float32)}
    one = [({"w": np.array([1.0, -2.0, 0.5], np.float32)}, 10)]
    # one update: the median is the step itself (cosine 1)
    assert bounded_fedavg_with_outcome(one, reference=base).flagged == ()
    # every step zero (each update is the base model): zero median, zero norms
    zeros = [({"w": np.zeros(3, np.float32)}, 10) for _ in range(4)]
    out = bounded_fedavg_with_outcome(zeros, reference=base)
    assert out.flagged == ()
    np.testing.assert_array_equal(out.arrays["w"], np.zeros(3))
    # a zero median (two steps against two): nothing to be opposed to
    d = np.array([1.0, 0.5, 0.0], np.float32)
    even = [({"w": s * d}, 10) for s in (1.0, 1.0, -1.0, -1.0)]
    assert bounded_fedavg_with_outcome(even, reference=base).flagged == ()
    # one zero step among honest ones is not opposed
    mixed = [({"w": s * d}, 10) for s in (1.0, 0.9, 1.1, 0.0)]
    assert bounded_fedavg_with_outcome(mixed, reference=base).flagged == ()


def test_bounded_fedavg_does_not_flag_honest_non_iid_steps() -> None:
    # Prepare: 10 devices with different data: steps share a component along d and each has its own
    # component as large (cosine about 0.5 between two of them), norms from 0.5x to 2x
    rng = np.random.default_rng(7)
    d = 40
    base = {"w": np.zeros(d, np.float32)}
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    results = []
    for i in range(10):
        own = rng.normal(size=d)
        own /= np.linalg.norm(own)
        step = (0.5 + 1.5 * i / 9) * (common + own)
        results.append(({"w": step.astype(np.float32)}, 50 + 10 * i))

    # Execute
    out = bounded_fedavg_with_outcome(results, reference=base)

    # Assert: no verdict, nothing left out
    assert out.flagged == ()
    assert out.selected == tuple(range(10))
