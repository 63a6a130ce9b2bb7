"""FLTrust as a strategy: the root data set, the root update, parameters, checkpoints, and attacks."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from qflare.config import GlobalConfig, parse_config
from qflare.enclave.config import EnclaveConfig
from qflare.errors import AggregationError, ConfigError
from qflare.fl.data.digits import digits_split
from qflare.fl.poisoning import Poisoner, choose_malicious
from qflare.fl.root import TaskRoot, root_indices
from qflare.fl.simulation import run_inprocess
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import STRATEGIES, FLTrust, get_strategy
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays
from qflare.types import NDArrays


class FixedRoot:
    """A root source returning ``reference + step``."""

    def __init__(self, step: NDArrays) -> None:
        self.step = step
        self.calls = 0

    def update(self, reference: Mapping[str, np.ndarray], spec: ModelSpec) -> NDArrays:
        self.calls += 1
        return {k: (reference[k] + self.step[k]).astype(np.float32) for k in reference}


def _vec(x: float, y: float) -> NDArrays:
    return {"w": np.array([x, y], np.float32)}


def _round(strategy: FLTrust, base: NDArrays, steps: list[tuple[NDArrays, int]]):  # type: ignore[no-untyped-def]
    acc = strategy.accumulator(ModelSpec.from_arrays(base), reference=base)
    for step, n in steps:
        acc.add({k: (base[k] + step[k]).astype(np.float32) for k in base}, n)
    return acc


def test_fltrust_is_registered_with_its_params() -> None:
    assert STRATEGIES["fltrust"] is FLTrust
    strategy = get_strategy("fltrust", root_task="digits", root_examples=50, root_seed=0)
    assert isinstance(strategy.root, TaskRoot) and strategy.root.examples == 50
    assert strategy.needs_reference


def test_fltrust_by_hand() -> None:
    # Prepare: root step (1, 0); client steps along it, orthogonal, opposite (claiming 10^7), and at 45 degrees
    base = _vec(3.0, -1.0)
    root = FixedRoot(_vec(1.0, 0.0))
    steps = [(_vec(2.0, 0.0), 10), (_vec(0.0, 1.0), 10), (_vec(-5.0, 0.0), 10_000_000), (_vec(1.0, 1.0), 10)]

    # Execute
    acc = _round(FLTrust(root), base, steps)
    out = acc.result()

    # Assert: trust 1, 0, 0, 1/sqrt(2); each step rescaled to |g0| = 1
    c = 1 / math.sqrt(2)
    expected = np.array([1.0 + c * c, c * c]) / (1 + c)
    np.testing.assert_allclose(out["w"] - base["w"], expected, rtol=1e-6)
    outcome = acc.last_outcome
    assert outcome is not None and outcome.flagged == (1, 2) and outcome.selected == (0, 3)
    assert outcome.weights[2] == 0.0  # the inflated, flipped step counts for nothing


def test_the_root_update_is_trained_once_per_round_and_restored_accumulators_agree() -> None:
    # Prepare
    base = _vec(0.0, 0.0)
    root = FixedRoot(_vec(1.0, 2.0))
    strategy = FLTrust(root)
    acc = _round(strategy, base, [(_vec(1.0, 1.0), 5), (_vec(-1.0, 0.0), 5), (_vec(2.0, 5.0), 5)])

    # Execute
    first, again = acc.result(), acc.result()
    restored = strategy.accumulator(ModelSpec.from_arrays(base), reference=base).from_state(acc.state())

    # Assert
    assert root.calls == 1
    np.testing.assert_array_equal(first["w"], again["w"])
    np.testing.assert_array_equal(restored.result()["w"], first["w"])


def test_fltrust_needs_the_base_model_and_a_non_zero_root_step() -> None:
    base = _vec(0.0, 0.0)
    with pytest.raises(AggregationError) as info:
        FLTrust(FixedRoot(_vec(1.0, 0.0))).accumulator(ModelSpec.from_arrays(base))
    assert info.value.reason == "missing_reference"
    with pytest.raises(AggregationError) as zero:
        _round(FLTrust(FixedRoot(_vec(0.0, 0.0))), base, [(_vec(1.0, 0.0), 1)]).result()
    assert zero.value.reason == "invalid_root_update"
    with pytest.raises(AggregationError) as batch:
        FLTrust(FixedRoot(_vec(1.0, 0.0))).aggregate([(base, 1)])
    assert batch.value.reason == "missing_reference"


@pytest.mark.parametrize(
    ("params", "key", "why"),
    [
        ({}, "aggregation.root_task", "needs the task"),
        ({"root_task": "mnist"}, "aggregation.root_task", "unknown task"),
        ({"root_task": 3}, "aggregation.root_task", "must be a task name"),
        ({"root_task": "digits", "root_examples": 0}, "aggregation.root_examples", ">= 1"),
        ({"root_task": "digits", "root_examples": 2.5}, "aggregation.root_examples", "integer"),
        ({"root_task": "digits", "root_seed": -1}, "aggregation.root_seed", ">= 0"),
        ({"root_task": "digits", "f": 1}, "aggregation.f", "not a parameter of fltrust"),
    ],
)
def test_bad_fltrust_params_are_config_errors_naming_the_key(params: dict[str, object], key: str, why: str) -> None:
    # Execute / Assert: at construction, at config load, and in the enclave's measured config
    with pytest.raises(ConfigError) as info:
        get_strategy("fltrust", **params)
    assert info.value.message.startswith(key) and why in info.value.message
    with pytest.raises(ConfigError) as at_load:
        parse_config(GlobalConfig, {"task": "digits", "aggregation": {"rule": "fltrust", "params": params}})
    assert key in at_load.value.message
    with pytest.raises(ConfigError) as in_enclave:
        EnclaveConfig(aggregation_rule="fltrust", aggregation_params=params)
    assert key in in_enclave.value.message


def test_a_root_data_set_larger_than_the_training_split_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        get_strategy("fltrust", root_task="digits", root_examples=10**6)
    assert info.value.message.startswith("aggregation.root_examples") and "1437" in info.value.message


def test_fltrust_params_reach_the_enclave_measurement() -> None:
    a = EnclaveConfig(aggregation_rule="fltrust", aggregation_params={"root_task": "digits"})
    b = EnclaveConfig(aggregation_rule="fltrust", aggregation_params={"root_task": "digits", "root_examples": 50})
    assert a.canonical_json() != b.canonical_json()
    assert EnclaveConfig.from_json(b.canonical_json()) == b


def test_the_root_data_set_is_a_seeded_sample_of_the_training_split_never_the_test_split() -> None:
    # Execute
    root = TaskRoot("digits", examples=100, seed=0)
    images = torch.stack([root.dataset[i][0] for i in range(len(root.dataset))]).numpy()  # type: ignore[arg-type]

    # Assert: exactly the chosen images of the training split (the test split is held out from it)
    split = digits_split(0, 0.2)
    np.testing.assert_array_equal(images, split.x_train[root.indices])
    assert len(set(root.indices.tolist())) == 100 and root.indices.max() < len(split.x_train)
    np.testing.assert_array_equal(root_indices(1437, 100, 0), root.indices)
    assert not np.array_equal(root_indices(1437, 100, 1), root.indices)


def test_the_root_update_is_reproducible_and_checks_the_model() -> None:
    # Prepare
    task = get_task("digits")
    base = get_arrays(task.build_model(3))
    root = TaskRoot(task, examples=40)

    # Execute
    a, b = root.update(base, task.model_spec()), root.update(base, task.model_spec())

    # Assert: the same root model twice, which moved from the base; another task's model is refused
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sum(float(np.sum((a[k] - base[k]) ** 2)) for k in a) > 0
    with pytest.raises(AggregationError) as info:
        TaskRoot("traffic", examples=40).update(base, task.model_spec())
    assert info.value.reason == "root_spec_mismatch" and "root_task" in info.value.message


@pytest.mark.long
def test_fltrust_beats_thirty_percent_sign_flip_and_ipm_on_digits_where_other_rules_fail() -> None:
    # Prepare: the table's setting (20 clients, Dirichlet(0.5), 6 malicious, colluders see the honest
    # updates), 8 rounds to keep the test short
    torch.set_num_threads(1)
    task = get_task("digits")
    malicious = [int(i) for i in choose_malicious([str(i) for i in range(20)], 0.3, seed=0)]

    def accuracy(rule: str, attack: str, **params: object) -> float:
        history = run_inprocess(task, 20, 8, partition="dirichlet", alpha=0.5, seed=0,
                                strategy=get_strategy(rule, **params), attack=Poisoner(attack, {}, num_classes=10),
                                malicious=malicious)
        return history[-1].metrics["accuracy"]

    # Execute
    fltrust = {a: accuracy("fltrust", a, root_task="digits") for a in ("sign-flip", "ipm")}
    default_flip = accuracy("bounded-fedavg", "sign-flip")
    median_flip = accuracy("median", "sign-flip")
    median_ipm = accuracy("median", "ipm")

    # Assert: FLTrust far above the median under both; above bounded FedAvg (which leaves opposed steps
    # out of the aggregate since its second pass, and so no longer fails by 40 points)
    print(f"fltrust {fltrust}, bounded-fedavg sign-flip {default_flip:.3f}, median sign-flip {median_flip:.3f}, "
          f"median ipm {median_ipm:.3f}")
    assert fltrust["sign-flip"] >= 0.75 and fltrust["sign-flip"] >= median_flip + 0.2
    assert fltrust["sign-flip"] > default_flip
    assert fltrust["ipm"] >= 0.75 and fltrust["ipm"] >= median_ipm + 0.3


@pytest.mark.slow
def test_the_code_fltrust_loads_inside_the_enclave_is_measured() -> None:
    # Prepare: a fresh interpreter builds and trains every task's root update, as the enclave would
    import subprocess
    import sys
    from pathlib import Path

    from qflare.enclave.measurement import ENCLAVE_MODULES

    code = (
        "import sys\n"
        "from qflare.fl.strategies import get_strategy\n"
        "from qflare.fl.tasks import TASKS\n"
        "from qflare.fl.train import get_arrays\n"
        "for name in TASKS:\n"
        "    s = get_strategy('fltrust', root_task=name, root_examples=8)\n"
        "    t = s.root.task\n"
        "    s.root.update(get_arrays(t.build_model(0)), t.model_spec())\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('qflare') and m.__file__))\n"
    )

    # Execute
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)

    # Assert
    root = Path(__import__("qflare").__file__).resolve().parent.parent
    loaded = {Path(f).resolve().relative_to(root).as_posix() for f in done.stdout.split()}
    assert "qflare/fl/root.py" in loaded
    assert loaded <= set(ENCLAVE_MODULES), sorted(loaded - set(ENCLAVE_MODULES))
