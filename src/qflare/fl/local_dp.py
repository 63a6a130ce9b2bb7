"""Local differential privacy: DP-SGD on the device with Opacus (extra ``dp``), and its accountant.

Each device clips every example's gradient to ``max_grad_norm``, adds Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` to the sum of a batch, and samples its batches by
Poisson sampling at rate ``batch_size / num_examples`` (Abadi et al. 2016, "Deep Learning with
Differential Privacy"; Opacus's ``GradSampleModule``, ``DPOptimizer`` and ``DPDataLoader``). Opacus's
RDP accountant composes every step the device has taken, over all the rounds it trained in, so
:attr:`LocalDP.epsilon` is what anyone who sees the device's updates (the server, the enclave, other
devices through the models) can learn about any one of its **examples** (example-level DP, for
that device's data).

The unit differs from central DP (``qflare.fl.privacy``: user-level, a whole device); the two
epsilons are not comparable.

The batch sampling and the noise draw from the operating system's entropy unless ``noise_seed`` is
given (tests, benchmarks): whoever knows the seed can subtract the noise and knows which examples
were sampled. The generator is torch's, not a CSPRNG (Opacus's ``secure_mode`` needs
``torchcsprng``, not installed).
"""

from __future__ import annotations

import copy
import functools
import math
import secrets
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from qflare.errors import ConfigError
from qflare.fl.training_config import LocalDPConfig

if TYPE_CHECKING:
    from qflare.fl.train import TrainResult

__all__ = ["LocalDP", "local_dp_available", "sample_rate", "steps_per_round"]

_Batch = tuple[torch.Tensor, ...]


def _opacus() -> Any:
    try:
        import opacus
    except ImportError:
        raise ConfigError("local differential privacy (training.dp) needs the 'dp' extra (Opacus): "
                          "pip install 'qflare[dp]'", reason="missing_extra") from None
    return opacus


def local_dp_available() -> bool:
    """Whether Opacus imports (the ``dp`` extra)."""
    try:
        _opacus()
    except ConfigError:
        return False
    return True


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate of one step: ``batch_size / num_examples``, at most 1."""
    if num_examples < 1 or batch_size < 1:
        raise ConfigError(f"need num_examples >= 1 and batch_size >= 1 (got {num_examples}, {batch_size})",
                          reason="invalid_train_config")
    return min(1.0, batch_size / num_examples)


def steps_per_round(num_examples: int, batch_size: int, epochs: int) -> int:
    """DP-SGD steps in one round: ``epochs`` times ``1 / sample_rate`` (Opacus's ``DPDataLoader`` length)."""
    return epochs * int(1 / sample_rate(num_examples, batch_size))


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, rate: float) -> tuple[float, ...]:
    # Opacus's RDPAccountant recomputes compute_rdp (about 0.1 s: the fractional orders) at every
    # get_epsilon; the RDP of n steps is n times that of one, so one computation per (z, q) serves.
    analysis = _opacus().accountants.analysis.rdp
    orders = _opacus().accountants.RDPAccountant.DEFAULT_ALPHAS
    return tuple(float(v) for v in analysis.compute_rdp(q=rate, noise_multiplier=noise_multiplier, steps=1,
                                                         orders=orders))


@functools.lru_cache(maxsize=64)
def _calibrate(target_epsilon: float, delta: float, rate: float, steps: int) -> float:
    # Opacus's binary search (a few seconds); devices of one process with equal shards share the answer.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(_opacus().accountants.utils.get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=rate, steps=steps, accountant="rdp",
            epsilon_tolerance=0.01 * target_epsilon))


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """What ``RDPAccountant(history).get_epsilon(delta)`` returns, from the cached per-step RDP."""
    if not history:
        return 0.0
    opacus = _opacus()
    orders = opacus.accountants.RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(np.asarray(_rdp_per_step(float(z), float(q))) * int(n) for z, q, n in history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = opacus.accountants.analysis.rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def _dp_trainable(opacus: Any, model: nn.Module) -> nn.Module:
    """``model`` if Opacus can train it; else a copy with Opacus's drop-in layers (``nn.GRU`` -> ``DPGRU``) holding
    the same state under the same names (so the update keeps the model's spec); else ``ConfigError``."""
    model.train()
    validator = opacus.validators.ModuleValidator
    errors = validator.validate(model, strict=False)
    if not errors:
        return model
    refusal = ConfigError(f"training.dp: Opacus cannot train {type(model).__name__} with DP-SGD: "
                          + "; ".join(str(e) for e in errors), reason="local_dp_unsupported_model")
    try:
        fixed = validator.fix(copy.deepcopy(model))
    except Exception:  # noqa: BLE001 - no drop-in replacement: the original reason is the one to give
        raise refusal from None
    original, replaced = model.state_dict(), fixed.state_dict()
    # A replacement that changes the state (BatchNorm -> GroupNorm drops the running statistics) would change
    # what the device trains and uploads: only a same-state swap (DPGRU renames and aliases nn.GRU's) is taken.
    if validator.validate(fixed, strict=False) or any(
            k not in replaced or replaced[k].shape != v.shape for k, v in original.items()):
        raise refusal
    fixed.load_state_dict(original, strict=False)
    if not all(torch.equal(fixed.state_dict()[k], v) for k, v in original.items()):
        raise refusal
    fixed.train()
    return fixed


class LocalDP:
    """One device's DP-SGD parameters and its privacy accountant, kept across rounds.

    Parameters
    ----------
    noise_multiplier:
        Noise standard deviation over ``max_grad_norm`` on each batch's gradient sum (> 0).
    max_grad_norm:
        L2 bound on each example's gradient (> 0).
    delta:
        The delta of every reported epsilon, in (0, 1); well below ``1 / num_examples``.
    budget:
        The largest epsilon this device spends; a round that would exceed it is not trained
        (:meth:`would_exceed`). ``None``: no limit, the spend is reported.
    noise_seed:
        Reproducible noise and batch sampling (tests, benchmarks only); default OS entropy.

    Use :meth:`from_config` to resolve ``training.dp`` for a device's dataset.
    """

    def __init__(self, *, noise_multiplier: float, max_grad_norm: float, delta: float = 1e-5,
                 budget: float | None = None, noise_seed: int | None = None) -> None:
        for key, value in (("noise_multiplier", noise_multiplier), ("max_grad_norm", max_grad_norm),
                           ("delta", delta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                                      and value > 0):
                raise ConfigError(f"training.dp.{key}: must be a finite number > 0, got {value!r}",
                                  reason="invalid_privacy_params")
        if not delta < 1:
            raise ConfigError(f"training.dp.delta: must be < 1, got {delta!r}", reason="invalid_privacy_params")
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"training.dp.target_epsilon: must be a finite number > 0, got {budget!r}",
                              reason="invalid_privacy_params")
        opacus = _opacus()
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.budget = budget
        self._seed = noise_seed
        self._accountant = opacus.accountants.RDPAccountant()

    @classmethod
    def from_config(cls, config: LocalDPConfig, *, num_examples: int, batch_size: int, epochs: int,
                    noise_seed: int | None = None) -> LocalDP:
        """Resolve ``training.dp`` for a device with ``num_examples`` examples.

        - only ``target_epsilon``: Opacus (``get_noise_multiplier``) picks the noise multiplier that
          spends it in ``rounds`` rounds of ``epochs`` epochs;
        - ``noise_multiplier`` and ``target_epsilon``: the latter is a budget; a plan of ``rounds``
          rounds exceeding it is refused now (``ConfigError`` reason ``privacy_budget_exceeded``);
        - only ``noise_multiplier``: no budget.
        """
        _opacus()  # the missing extra is named before any work
        q = sample_rate(num_examples, batch_size)
        planned = steps_per_round(num_examples, batch_size, epochs) * config.rounds if config.rounds else None
        z = config.noise_multiplier
        if z is None:
            assert config.target_epsilon is not None and planned is not None  # LocalDPConfig's validator
            try:
                z = _calibrate(config.target_epsilon, config.delta, q, planned)
            except ValueError as exc:
                raise ConfigError(
                    f"training.dp.target_epsilon: {config.target_epsilon} cannot be met in {config.rounds} rounds "
                    f"({planned} steps at sampling rate {q:.3g}, delta {config.delta}): {exc}",
                    reason="privacy_budget_unreachable") from None
        dp = cls(noise_multiplier=z, max_grad_norm=config.max_grad_norm, delta=config.delta,
                 budget=config.target_epsilon, noise_seed=noise_seed)
        if config.noise_multiplier is not None and config.target_epsilon is not None and planned is not None:
            spend = dp.epsilon_after(planned, q)
            if spend > config.target_epsilon:
                raise ConfigError(
                    f"training.dp.target_epsilon: {config.rounds} rounds ({planned} steps at sampling rate {q:.3g}) "
                    f"with noise_multiplier={z} spend epsilon={spend:.3g} > budget {config.target_epsilon} "
                    f"(delta={config.delta})", reason="privacy_budget_exceeded")
        return dp

    def inherit(self, previous: LocalDP) -> None:
        """Count the steps ``previous`` recorded (same device, changed plan): spent privacy is never reset."""
        self.add_spent(previous.spent())

    def spent(self) -> list[tuple[float, float, int]]:
        """Every step recorded so far as Opacus's ``(noise_multiplier, sample_rate, steps)`` triples."""
        return [(float(z), float(q), int(n)) for z, q, n in self._accountant.history]

    def add_spent(self, history: Any) -> None:
        """Count steps spent before (a restarted device's saved :meth:`spent`); ``ConfigError`` on a bad record."""
        if not isinstance(history, list):
            raise ConfigError("local DP state: history is not a list", reason="bad_privacy_state")
        triples: list[tuple[float, float, int]] = []
        for item in history:
            ok = isinstance(item, list | tuple) and len(item) == 3 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in item)
            if not ok or not (item[0] > 0 and 0 < item[1] <= 1 and isinstance(item[2], int) and item[2] >= 0):
                raise ConfigError(f"local DP state: bad record {item!r}", reason="bad_privacy_state")
            triples.append((float(item[0]), float(item[1]), int(item[2])))
        self._accountant.history = [*triples, *self._accountant.history]

    @property
    def steps(self) -> int:
        """DP-SGD steps taken so far, over all rounds."""
        return sum(int(n) for _, _, n in self._accountant.history)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta` (Opacus's RDP accountant); 0 before the first step."""
        return _epsilon(self._accountant.history, self.delta)

    def epsilon_after(self, steps: int, rate: float) -> float:
        """Epsilon once ``steps`` more steps at sampling rate ``rate`` are taken (nothing is recorded)."""
        return _epsilon([*self._accountant.history, (self.noise_multiplier, rate, steps)], self.delta)

    def would_exceed(self, *, num_examples: int, batch_size: int, epochs: int) -> bool:
        """Whether one more round would spend more than the budget (never, without one)."""
        if self.budget is None:
            return False
        steps = steps_per_round(num_examples, batch_size, epochs)
        # the tolerance of get_noise_multiplier's search: a plan spending exactly the budget fits
        return self.epsilon_after(steps, sample_rate(num_examples, batch_size)) > self.budget * 1.0001

    def report(self) -> dict[str, Any]:
        """What a device reports: mode, epsilon, delta, steps, noise_multiplier, max_grad_norm."""
        return {"mode": "local", "epsilon": self.epsilon, "delta": self.delta, "steps": self.steps,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm}

    def metadata(self) -> dict[str, str]:
        """:meth:`report` as update metadata (strings: ``dp_mode``, ``dp_epsilon``, ...)."""
        return {f"dp_{key}": (value if isinstance(value, str) else repr(value)) for key, value in self.report().items()}

    def train(self, model: nn.Module, dataset: Dataset[_Batch], *, epochs: int, batch_size: int, lr: float,
              optimizer: str, momentum: float, weight_decay: float, criterion: Callable[..., torch.Tensor],
              seed: int) -> TrainResult:
        """DP-SGD on ``model`` in place; called by :func:`qflare.fl.train.train_local` (which checks the settings).

        ``seed`` is not used: the batches and the noise come from ``noise_seed`` or OS entropy.
        """
        from qflare.fl.train import TrainResult, _optimizer, _StepGuard

        opacus = _opacus()
        plain = model
        model = _dp_trainable(opacus, plain)
        num_examples = len(dataset)  # type: ignore[arg-type]
        q = sample_rate(num_examples, batch_size)
        entropy = self._seed if self._seed is not None else secrets.randbits(63)
        self._seed = None if self._seed is None else self._seed + 1  # fresh noise every round
        sampling = torch.Generator().manual_seed(entropy)
        noise = torch.Generator().manual_seed(entropy ^ 0x5DEECE66D)
        loader = opacus.data_loader.DPDataLoader(dataset, sample_rate=q, generator=sampling)
        gsm = opacus.GradSampleModule(model)
        try:
            opt = opacus.optimizers.DPOptimizer(
                _optimizer(model, optimizer, lr, momentum, weight_decay), noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm, expected_batch_size=max(1, round(q * num_examples)),
                generator=noise)
            guard = _StepGuard(opt, [p for p in model.parameters() if p.requires_grad])
            gsm.train()
            total, seen, steps, diverged = 0.0, 0, 0, False
            for _ in range(epochs):
                total, seen = 0.0, 0
                for batch in loader:
                    *inputs, target = batch
                    opt.zero_grad(set_to_none=True)
                    loss = criterion(gsm(*inputs), target)
                    with warnings.catch_warnings():
                        # the inputs need no gradient (data): Opacus's hooks still see every layer's output
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        loss.backward()  # an empty Poisson batch: NaN loss, no per-sample gradient, noise only
                    applied = guard.step()
                    self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=q)  # noise was drawn
                    if not applied:
                        diverged = True
                        break
                    steps += 1
                    if len(target):
                        total += float(loss.detach()) * len(target)
                        seen += len(target)
                if diverged:
                    break
        finally:
            gsm._close()  # removes the hooks and the per-sample gradients: the model is a plain module again
        if model is not plain:
            trained = model.state_dict()
            plain.load_state_dict({k: trained[k] for k in plain.state_dict()}, strict=True)
        mean_loss = total / seen if seen else float("nan")
        return TrainResult(num_examples=num_examples, mean_loss=mean_loss, num_steps=steps, diverged=diverged)

    def __repr__(self) -> str:
        return (f"LocalDP(noise_multiplier={self.noise_multiplier}, max_grad_norm={self.max_grad_norm}, "
                f"delta={self.delta}, budget={self.budget}, epsilon={self.epsilon:.4g})")
