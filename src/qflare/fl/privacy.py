"""Central differential privacy: clipping wrappers over any strategy, and the privacy accountant.

The wrappers follow Flower's ``dp_fixed_clipping.py`` (they take a ``strategy: Strategy``, never
subclass one) and DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"):

- each update's *step* (``update - base``, so the accumulator needs the round's base model as
  ``reference``) is clipped to L2 norm ``clip``;
- the clipped steps are aggregated by the wrapped strategy with **equal weights** (a claimed
  ``num_examples`` would change one device's influence and so the sensitivity);
- Gaussian noise of standard deviation ``noise_multiplier * clip / n`` is added to the average
  (sensitivity of a mean of ``n`` steps bounded by ``clip`` is ``clip / n``).

:class:`DPAdaptiveClipping` moves ``clip`` towards a quantile of the step norms each round with a
noised count of the unclipped steps (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping", Algorithm 1), splitting the noise so the total noise multiplier stays the
configured one.

The privacy spent is computed by Google's ``dp-accounting`` RDP accountant (extra ``dp``): each round
is a Poisson-sampled Gaussian mechanism with sampling rate = the fraction of devices selected.
QFLARE selects a fixed number of devices per round; treating that as Poisson sampling at the same
rate is the approximation TensorFlow Federated and Andrew et al. make too. The device (not a
sample) is the unit of privacy: user-level DP.

The noise is drawn by :class:`qflare.fl.noise.SecureGaussian` (ChaCha20 key stream, sums of four
samples against floating-point attacks), keyed per round by 256 bits of the operating system's
entropy unless a ``seed`` or ``rng`` is given (tests): a host that knows the key can subtract the
noise, which is why the key lives only in the enclave and its sealed checkpoint.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import Accumulator, AccumulatorState
from qflare.fl.influence import clip_factor, global_norm
from qflare.fl.noise import KEY_BITS, SecureGaussian
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies.base import Strategy
from qflare.types import NDArrays

__all__ = [
    "DPAdaptiveClipping",
    "DPFixedClipping",
    "PrivacyAccountant",
    "PrivacyPlan",
    "PrivacySpent",
    "central_from_config",
    "dp_from_params",
    "dp_params",
    "epsilon_for",
    "noise_for_epsilon",
    "plan_central",
]

_INNER = "inner/"
_SEED = "dp/seed"
_UNCLIPPED = "dp/unclipped"


def _positive(key: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"aggregation.privacy.{key}: must be a finite number > 0, got {value!r}",
                          reason="invalid_privacy_params")
    return float(value)


def _seed_to_array(seed: int) -> np.ndarray:
    # sealed checkpoints store float64: 16-bit pieces are exact (16 of them for a 256-bit noise key)
    return np.array([(seed >> (16 * i)) & 0xFFFF for i in range(KEY_BITS // 16)], dtype=np.float64)


def _seed_from_array(array: np.ndarray) -> int:
    return sum(int(v) << (16 * i) for i, v in enumerate(np.asarray(array).reshape(-1)[:KEY_BITS // 16]))


class _DPAccumulator(Accumulator):
    """Clips each step to ``clip``, aggregates through ``inner`` with weight 1, adds noise once."""

    def __init__(self, owner: DPFixedClipping, spec: ModelSpec, inner: Accumulator, reference: NDArrays,
                 clip: float, seed: int) -> None:
        super().__init__(spec)
        self._owner = owner
        self._inner = inner
        self._reference = reference
        self.clip = clip
        self._seed = seed
        self._unclipped = 0
        self._released: NDArrays | None = None

    def _add(self, arrays: Mapping[str, np.ndarray], num_examples: int) -> None:
        # The step and its norm in float64: a finite float32 step beyond ~1e19 (a device whose local
        # training ran away on a heavily noised model) overflows a float32 norm to inf, and clip_factor
        # would then drop the step (factor 0) instead of clipping it to norm ``clip``.
        steps = {name: np.asarray(a, dtype=np.float64) - self._reference[name] for name, a in arrays.items()}
        norm = global_norm(steps)
        factor = clip_factor(norm, self.clip)
        clipped = {name: (self._reference[name] + step * factor).astype(self.spec[name].dtype)
                   for name, step in steps.items()}
        self._inner.add(clipped, 1)  # equal weights: the sensitivity is clip / n
        self._unclipped += int(norm <= self.clip)

    def _result(self) -> NDArrays:
        # Noise is drawn once per round: a second release with fresh noise would spend the budget twice.
        if self._released is None:
            noise = SecureGaussian(self._seed)
            average = self._inner.result()
            std = self._owner.update_noise_multiplier * self.clip / self.count
            released: NDArrays = {}
            for name, tensor in average.items():
                if np.issubdtype(tensor.dtype, np.floating):
                    drawn = noise.normal(std, tensor.shape)
                    released[name] = (np.asarray(tensor, dtype=np.float64) + drawn).astype(tensor.dtype)
                else:
                    released[name] = tensor
            self._owner.round_released(self, noise)
            self._released = released
        return {name: a.copy() for name, a in self._released.items()}

    @property
    def unclipped(self) -> int:
        """How many steps were within ``clip`` (the adaptive rule's count, before its noise)."""
        return self._unclipped

    def _export(self) -> tuple[NDArrays, tuple[int, ...]]:
        inner = self._inner.state()
        arrays = {f"{_INNER}{k}": v for k, v in inner.arrays.items()}
        arrays[_SEED] = _seed_to_array(self._seed)
        arrays[_UNCLIPPED] = np.array([self._unclipped], dtype=np.float64)
        return arrays, inner.weights

    def _import(self, state: AccumulatorState) -> None:
        try:
            self._seed = _seed_from_array(state.arrays[_SEED])
            self._unclipped = int(np.asarray(state.arrays[_UNCLIPPED]).reshape(-1)[0])
        except KeyError:
            raise AggregationError("accumulator state lacks the DP fields", reason="bad_accumulator_state") from None
        inner = {k[len(_INNER):]: v for k, v in state.arrays.items() if k.startswith(_INNER)}
        self._inner.from_state(AccumulatorState(state.count, state.count, inner, state.weights))


class DPFixedClipping(Strategy):
    """Central DP with a fixed clipping norm around any strategy.

    Parameters
    ----------
    strategy:
        The wrapped rule; it aggregates the clipped updates with equal weights.
    clip:
        L2 bound on each step ``update - base`` (> 0).
    noise_multiplier:
        Noise standard deviation over ``clip`` on the sum (> 0); the accountant's ``z``.
    seed, rng:
        Reproducible noise for tests; default the operating system's entropy.
    """

    name = "dp-fixed-clipping"
    needs_reference: ClassVar[bool] = True

    def __init__(self, strategy: Strategy, *, clip: float, noise_multiplier: float, seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.strategy = strategy
        self.clip = _positive("clip", clip)
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self._rng = rng if rng is not None else (np.random.default_rng(seed) if seed is not None else None)

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the model (all of it, with a fixed clip)."""
        return self.noise_multiplier

    def _next_seed(self) -> int:
        if self._rng is None:
            return secrets.randbits(KEY_BITS)
        return sum(int(self._rng.integers(0, 2**32)) << (32 * i) for i in range(KEY_BITS // 32))

    def aggregate(self, results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
        raise AggregationError(f"{self.name} clips steps: build accumulator(spec, reference=base model)",
                               reason="missing_reference")

    def accumulator(self, spec: ModelSpec, *, reference: NDArrays | None = None) -> Accumulator:
        if reference is None:
            raise AggregationError(f"{self.name} needs the round's base model", reason="missing_reference")
        base = {name: np.asarray(reference[name], dtype=np.float64) for name, _ in spec.items()}
        inner = self.strategy.accumulator(spec, reference=reference)
        return _DPAccumulator(self, spec, inner, base, self.clip, self._next_seed())

    def round_released(self, acc: _DPAccumulator, noise: SecureGaussian) -> None:
        """Hook after a round's noise is drawn (the adaptive rule updates ``clip`` here)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, clip={self.clip}, noise_multiplier={self.noise_multiplier})"


class DPAdaptiveClipping(DPFixedClipping):
    """Central DP whose clipping norm tracks a quantile of the step norms (Andrew et al. 2021).

    After each round ``clip <- clip * exp(-clip_learning_rate * (b - target_quantile))`` where ``b`` is
    the fraction of steps within ``clip`` plus N(0, ``clipped_count_stddev``^2) / n. The update noise
    multiplier is ``(z^-2 - (2 clipped_count_stddev)^-2)^-1/2`` so that the two releases together
    cost what one Gaussian mechanism with multiplier ``z = noise_multiplier`` costs (their Theorem 1).

    Parameters
    ----------
    strategy, noise_multiplier, seed, rng:
        As :class:`DPFixedClipping`.
    initial_clip:
        The first round's clipping norm (> 0).
    target_quantile:
        The fraction of steps to leave unclipped, in (0, 1); default 0.5.
    clip_learning_rate:
        Step of the geometric update (> 0); default 0.2 (the paper's).
    expected_clients:
        Devices per round; the default ``clipped_count_stddev`` is ``max(expected_clients / 20, z)``
        (the paper's ``m / 20``, raised when it would leave no noise for the model).
    """

    name = "dp-adaptive-clipping"

    def __init__(self, strategy: Strategy, *, noise_multiplier: float, initial_clip: float = 0.1,
                 target_quantile: float = 0.5, clip_learning_rate: float = 0.2, expected_clients: int = 10,
                 clipped_count_stddev: float | None = None, seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(strategy, clip=initial_clip, noise_multiplier=noise_multiplier, seed=seed, rng=rng)
        if not 0 < target_quantile < 1:
            raise ConfigError(f"aggregation.privacy.target_quantile: must be in (0, 1), got {target_quantile!r}",
                              reason="invalid_privacy_params")
        self.target_quantile = float(target_quantile)
        self.clip_learning_rate = _positive("clip_learning_rate", clip_learning_rate)
        sigma_b = clipped_count_stddev if clipped_count_stddev is not None else max(expected_clients / 20,
                                                                                     self.noise_multiplier)
        self.clipped_count_stddev = _positive("clipped_count_stddev", sigma_b)
        if 2 * self.clipped_count_stddev <= self.noise_multiplier:
            raise ConfigError("aggregation.privacy.clipped_count_stddev: must exceed noise_multiplier / 2",
                              reason="invalid_privacy_params")
        self.clip_history: list[float] = [self.clip]

    @property
    def update_noise_multiplier(self) -> float:
        return float((self.noise_multiplier ** -2 - (2 * self.clipped_count_stddev) ** -2) ** -0.5)

    def round_released(self, acc: _DPAccumulator, noise: SecureGaussian) -> None:
        noised = (acc.unclipped + float(noise.normal(self.clipped_count_stddev))) / acc.count
        self.clip = float(acc.clip * math.exp(-self.clip_learning_rate * (noised - self.target_quantile)))
        self.clip_history.append(self.clip)


# --- accounting -------------------------------------------------------------------------------


def _accountant() -> Any:
    try:
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:  # pragma: no cover - the extra is installed by make test
        raise ConfigError("differential privacy needs the 'dp' extra: pip install 'qflare[dp]'",
                          reason="missing_extra") from None
    return rdp_privacy_accountant.RdpAccountant()


def _event(noise_multiplier: float, sampling_rate: float, rounds: int) -> Any:
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    step = gaussian if sampling_rate >= 1 else dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)
    return dp_accounting.SelfComposedDpEvent(step, rounds)


def epsilon_for(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` rounds of the sampled Gaussian mechanism (dp-accounting's RDP accountant)."""
    if rounds <= 0:
        return 0.0
    accountant = _accountant()
    accountant.compose(_event(noise_multiplier, sampling_rate, rounds))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier spending at most ``target_epsilon`` in ``rounds`` rounds
    (``dp_accounting.calibrate_dp_mechanism``)."""
    import dp_accounting

    _accountant()
    return float(dp_accounting.calibrate_dp_mechanism(
        _accountant, lambda z: _event(z, sampling_rate, rounds), target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4,
    ))


@dataclass(frozen=True)
class PrivacySpent:
    """Epsilon of the last round alone and of every round so far, at ``delta``."""

    mode: str
    epsilon: float
    delta: float
    rounds: int
    epsilon_round: float
    noise_multiplier: float

    def as_dict(self) -> dict[str, Any]:
        """The run summary's ``privacy`` entry."""
        return {"mode": self.mode, "epsilon": self.epsilon, "delta": self.delta, "rounds": self.rounds,
                "epsilon_round": self.epsilon_round, "noise_multiplier": self.noise_multiplier}


class PrivacyAccountant:
    """Tracks the rounds released and refuses one that would exceed ``budget``.

    Parameters
    ----------
    noise_multiplier:
        The mechanism's total noise multiplier ``z``.
    delta:
        The delta of every reported epsilon.
    budget:
        The largest epsilon the run may spend; ``None`` for no limit.
    """

    def __init__(self, noise_multiplier: float, delta: float, *, budget: float | None = None,
                 mode: str = "central") -> None:
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self.delta = _positive("delta", delta)
        self.budget = budget
        self.mode = mode
        self._rounds: Counter[float] = Counter()

    def _epsilon(self, rounds: Counter[float]) -> float:
        if not rounds:
            return 0.0
        accountant = _accountant()
        for rate, count in sorted(rounds.items()):
            accountant.compose(_event(self.noise_multiplier, rate, count))
        return float(accountant.get_epsilon(self.delta))

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return self._epsilon(self._rounds)

    def would_exceed(self, sampling_rate: float) -> bool:
        """Whether one more round at ``sampling_rate`` would spend more than the budget."""
        if self.budget is None:
            return False
        return self._epsilon(self._rounds + Counter({float(sampling_rate): 1})) > self.budget

    def spend(self, sampling_rate: float) -> PrivacySpent:
        """Record one released round at ``sampling_rate``; raise ``AggregationError`` past the budget."""
        if self.would_exceed(sampling_rate):
            raise AggregationError(f"privacy budget epsilon={self.budget} reached", reason="privacy_budget_reached")
        self._rounds[float(sampling_rate)] += 1
        return self.spent(epsilon_round=epsilon_for(self.noise_multiplier, sampling_rate, 1, self.delta))

    def spent(self, *, epsilon_round: float = 0.0) -> PrivacySpent:
        """What has been spent so far."""
        return PrivacySpent(self.mode, self.epsilon, self.delta, sum(self._rounds.values()), epsilon_round,
                            self.noise_multiplier)


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise multiplier a run uses, its budget, and the epsilon its planned rounds would spend."""

    noise_multiplier: float
    budget: float | None
    planned_epsilon: float | None


def plan_central(*, noise_multiplier: float | None, target_epsilon: float | None, delta: float,
                 sampling_rate: float, rounds: int | None) -> PrivacyPlan:
    """Resolve ``aggregation.privacy`` for a run of ``rounds`` rounds at ``sampling_rate``.

    - only ``target_epsilon``: the accountant picks the noise multiplier for the planned rounds;
    - ``noise_multiplier`` and ``target_epsilon``: the latter is a budget, and a plan exceeding it is
      refused now (``ConfigError`` reason ``privacy_budget_exceeded``) rather than after the money is spent;
    - only ``noise_multiplier``: no budget, the spend is reported.
    """
    _positive("delta", delta)
    if not 0 < sampling_rate <= 1:
        raise ConfigError(f"rounds.fraction: sampling rate must be in (0, 1], got {sampling_rate!r}",
                          reason="invalid_privacy_params")
    if noise_multiplier is None and target_epsilon is None:
        raise ConfigError("aggregation.privacy.noise_multiplier: give it or target_epsilon",
                          reason="invalid_privacy_params")
    if noise_multiplier is None:
        assert target_epsilon is not None
        _positive("target_epsilon", target_epsilon)
        if rounds is None:
            raise ConfigError("aggregation.privacy.target_epsilon: needs a planned number of rounds",
                              reason="invalid_privacy_params")
        z = noise_for_epsilon(target_epsilon, sampling_rate, rounds, delta)
        return PrivacyPlan(z, target_epsilon, epsilon_for(z, sampling_rate, rounds, delta))
    z = _positive("noise_multiplier", noise_multiplier)
    planned = epsilon_for(z, sampling_rate, rounds, delta) if rounds is not None else None
    if target_epsilon is not None:
        _positive("target_epsilon", target_epsilon)
        if planned is not None and planned > target_epsilon:
            raise ConfigError(
                f"aggregation.privacy.target_epsilon: {rounds} rounds at noise_multiplier={z} and sampling rate "
                f"{sampling_rate} spend epsilon={planned:.3g} > budget {target_epsilon} (delta={delta})",
                reason="privacy_budget_exceeded",
            )
    return PrivacyPlan(z, target_epsilon, planned)


def central_from_config(strategy: Strategy, *, mode: str, noise_multiplier: float | None,
                        target_epsilon: float | None, clip: float, delta: float, adaptive: bool = False,
                        target_quantile: float = 0.5, clip_learning_rate: float = 0.2, sampling_rate: float,
                        rounds: int | None, expected_clients: int = 10,
                        seed: int | None = None) -> tuple[Strategy, PrivacyAccountant | None]:
    """``strategy`` wrapped as ``aggregation.privacy`` says, and the accountant of the run (``None`` for mode none)."""
    if mode == "none":
        return strategy, None
    if mode != "central":
        raise ConfigError(f"aggregation.privacy.mode: unknown mode {mode!r}", reason="invalid_privacy_params")
    plan = plan_central(noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
                        sampling_rate=sampling_rate, rounds=rounds)
    wrapped: DPFixedClipping
    if adaptive:
        wrapped = DPAdaptiveClipping(strategy, noise_multiplier=plan.noise_multiplier, initial_clip=clip,
                                     target_quantile=target_quantile, clip_learning_rate=clip_learning_rate,
                                     expected_clients=expected_clients, seed=seed)
    else:
        wrapped = DPFixedClipping(strategy, clip=clip, noise_multiplier=plan.noise_multiplier, seed=seed)
    return wrapped, PrivacyAccountant(plan.noise_multiplier, delta, budget=plan.budget)



# --- the enclave's measured form --------------------------------------------------------------

_PARAM_KEYS = frozenset({"mode", "noise_multiplier", "clip", "adaptive", "target_quantile", "clip_learning_rate",
                         "clipped_count_stddev"})


def dp_params(strategy: DPFixedClipping) -> dict[str, Any]:
    """The resolved parameters of ``strategy`` (JSON numbers): what ``EnclaveConfig.privacy`` carries, so the
    enclave builds the same wrapper with :func:`dp_from_params` (no accountant there: z is already resolved)."""
    doc: dict[str, Any] = {"mode": "central", "noise_multiplier": strategy.noise_multiplier, "clip": strategy.clip,
                           "adaptive": isinstance(strategy, DPAdaptiveClipping)}
    if isinstance(strategy, DPAdaptiveClipping):
        doc.update(clip=strategy.clip_history[0], target_quantile=strategy.target_quantile,
                   clip_learning_rate=strategy.clip_learning_rate, clipped_count_stddev=strategy.clipped_count_stddev)
    return doc


def dp_from_params(strategy: Strategy, params: Mapping[str, Any]) -> DPFixedClipping:
    """``strategy`` wrapped as :func:`dp_params` output says; ``ConfigError`` on unknown keys or bad values."""
    unknown = sorted(set(params) - _PARAM_KEYS)
    if unknown or params.get("mode") != "central":
        raise ConfigError(f"aggregation.privacy: unknown keys {unknown} or mode {params.get('mode')!r} (need central)",
                          reason="invalid_privacy_params")
    for key in ("noise_multiplier", "clip", "target_quantile", "clip_learning_rate", "clipped_count_stddev"):
        value = params.get(key, 1.0 if key in ("noise_multiplier", "clip") else None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"aggregation.privacy.{key}: must be a number", reason="invalid_privacy_params")
    adaptive = params.get("adaptive", False)
    if not isinstance(adaptive, bool):
        raise ConfigError("aggregation.privacy.adaptive: must be true or false", reason="invalid_privacy_params")
    if not adaptive:
        extra = sorted(set(params) - {"mode", "noise_multiplier", "clip", "adaptive"})
        if extra:
            raise ConfigError(f"aggregation.privacy: {extra} apply to adaptive clipping only",
                              reason="invalid_privacy_params")
        return DPFixedClipping(strategy, clip=params.get("clip"), noise_multiplier=params.get("noise_multiplier"))  # type: ignore[arg-type]
    return DPAdaptiveClipping(
        strategy, noise_multiplier=params.get("noise_multiplier"), initial_clip=params.get("clip"),  # type: ignore[arg-type]
        target_quantile=params.get("target_quantile", 0.5), clip_learning_rate=params.get("clip_learning_rate", 0.2),
        clipped_count_stddev=params.get("clipped_count_stddev"),
    )
