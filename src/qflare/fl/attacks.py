"""Model-poisoning attacks as pure functions, for simulations that test the robust rules.

Update attacks take the attacker's honest update and return the poisoned one. With ``reference``
(the global model), updates are full weights and the attack acts on the step
``update - reference``; without it, updates are deltas. Colluding attacks (ALIE, IPM) build their
update from the honest updates they observe, passed as ``honest``. Data and metadata attacks
(label flipping, sample-count inflation) act on the local labels and the claimed ``num_examples``.

:data:`ATTACKS` maps a name to an :class:`Attack` saying which of these four kinds it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from qflare.errors import ConfigError
from qflare.types import NDArrays

__all__ = [
    "ATTACKS",
    "Attack",
    "alie_z",
    "gaussian_noise",
    "inflate_num_examples",
    "inner_product_manipulation",
    "flip_labels",
    "little_is_enough",
    "scale_update",
    "sign_flip",
]


def _step(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if reference is None:
        return {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
    return {k: np.asarray(v, dtype=np.float64) - np.asarray(reference[k], dtype=np.float64) for k, v in update.items()}


def _back(
    step: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None
) -> NDArrays:
    out: NDArrays = {}
    for k, v in step.items():
        full = v if reference is None else v + np.asarray(reference[k], dtype=np.float64)
        dtype = np.asarray(like[k]).dtype
        out[k] = (np.rint(full) if dtype.kind in "iub" else full).astype(dtype)
    return out


def sign_flip(
    update: Mapping[str, np.ndarray], *, scale: float = 1.0, reference: Mapping[str, np.ndarray] | None = None
) -> NDArrays:
    """Sign flipping: send ``-scale`` times the honest step (e.g. Damaskinos et al. 2018; Li et al. 2019)."""
    return _back({k: -scale * v for k, v in _step(update, reference).items()}, update, reference)


def scale_update(
    update: Mapping[str, np.ndarray], *, factor: float = 10.0, reference: Mapping[str, np.ndarray] | None = None
) -> NDArrays:
    """Boosting: multiply the step by ``factor`` (default 10), as in model replacement.

    Bhagoji et al. 2019, "Analyzing FL through an Adversarial Lens"; Bagdasaryan et al. 2020,
    "How To Backdoor Federated Learning" (boost by ``n / lr`` to replace the global model).
    """
    return _back({k: factor * v for k, v in _step(update, reference).items()}, update, reference)


def gaussian_noise(
    update: Mapping[str, np.ndarray],
    *,
    sigma: float = 1.0,
    rng: np.random.Generator,
    replace: bool = False,
    reference: Mapping[str, np.ndarray] | None = None,
) -> NDArrays:
    """Gaussian attack (Blanchard et al. 2017): the step plus ``N(0, sigma^2)`` noise, or noise alone.

    Parameters
    ----------
    sigma:
        Noise standard deviation (default 1.0).
    rng:
        Source of randomness (required, so simulations are reproducible).
    replace:
        Send pure noise instead of the noisy step (default ``False``).
    """
    step = _step(update, reference)
    noisy = {k: (0.0 if replace else v) + rng.normal(scale=sigma, size=v.shape) for k, v in step.items()}
    return _back(noisy, update, reference)


def flip_labels(labels: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Label flipping on local data: ``y -> C - 1 - y`` (e.g. Fang et al. 2020; Tolpegin et al. 2020).

    Raises
    ------
    ConfigError
        ``num_classes < 2`` or labels outside ``[0, num_classes)``.
    """
    if num_classes < 2:
        raise ConfigError(f"label flipping needs num_classes >= 2, got {num_classes}", reason="invalid_attack_params")
    y = np.asarray(labels)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes})", reason="invalid_attack_params")
    return (num_classes - 1 - y).astype(y.dtype)


def inflate_num_examples(claimed: int, *, factor: float = 100.0, maximum: int = 10_000_000) -> int:
    """Sample-count inflation: claim ``factor`` times the real count (capped at ``maximum``), so FedAvg
    weights the update more; :func:`qflare.fl.influence.cap_num_examples` is the defence."""
    return min(maximum, max(0, math.ceil(claimed * factor)))


def alie_z(n: int, f: int) -> float:
    """``z_max`` of "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

    ``s = floor(n / 2 + 1) - f`` honest workers must be "won over"; ``z_max`` is the largest ``z``
    with ``Phi(z) < (n - s) / n``, i.e. ``Phi^{-1}((n - s) / n)``.

    Raises
    ------
    ConfigError
        ``n < 2``, ``f`` outside ``[1, n)``, or parameters for which ``(n - s) / n`` is not in (0, 1).
    """
    if n < 2 or not 0 < f < n:
        raise ConfigError(f"ALIE needs n >= 2 and 0 < f < n (n={n}, f={f})", reason="invalid_attack_params")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        raise ConfigError(f"ALIE's (n - s) / n = {p} is not in (0, 1) (n={n}, f={f})", reason="invalid_attack_params")
    return NormalDist().inv_cdf(p)


def _stats(
    honest: Sequence[Mapping[str, np.ndarray]], reference: Mapping[str, np.ndarray] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not honest:
        raise ConfigError("a colluding attack needs at least one honest update", reason="invalid_attack_params")
    steps = [_step(u, reference) for u in honest]
    mean = {k: np.mean([s[k] for s in steps], axis=0) for k in steps[0]}
    std = {k: np.std([s[k] for s in steps], axis=0) for k in steps[0]}
    return mean, std


def little_is_enough(
    honest: Sequence[Mapping[str, np.ndarray]],
    *,
    n: int,
    f: int,
    z: float | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> NDArrays:
    """A Little Is Enough (Baruch et al. 2019): every attacker sends ``mu + z * sigma`` per coordinate.

    ``mu`` and ``sigma`` are the coordinate-wise mean and (population) standard deviation of the
    honest steps; the shift stays inside the honest spread, so median/trimmed mean/Krum accept it.

    Parameters
    ----------
    honest:
        The honest updates the colluders observe.
    n, f:
        Total number of workers and of attackers, for :func:`alie_z`.
    z:
        Override ``z`` (default: :func:`alie_z` ``(n, f)``).
    """
    zz = alie_z(n, f) if z is None else z
    mean, std = _stats(honest, reference)
    return _back({k: mean[k] + zz * std[k] for k in mean}, honest[0], reference)


def inner_product_manipulation(
    honest: Sequence[Mapping[str, np.ndarray]],
    *,
    epsilon: float = 0.1,
    reference: Mapping[str, np.ndarray] | None = None,
) -> NDArrays:
    """Inner Product Manipulation (Xie, Koyejo & Gupta, UAI 2020, "Fall of Empires"): send
    ``-epsilon`` times the mean honest step, so the aggregate's inner product with the true step
    turns negative. Small ``epsilon`` (default 0.1) evades median/Krum; large ``epsilon`` (> n/f)
    defeats averaging.
    """
    mean, _ = _stats(honest, reference)
    return _back({k: -epsilon * v for k, v in mean.items()}, honest[0], reference)


AttackKind = Literal["update", "colluding", "labels", "num_examples"]


@dataclass(frozen=True)
class Attack:
    """A registered attack: its kind (what it takes) and the function."""

    name: str
    kind: AttackKind
    fn: Callable[..., object]


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("sign-flip", "update", sign_flip),
        Attack("scale", "update", scale_update),
        Attack("gaussian", "update", gaussian_noise),
        Attack("label-flip", "labels", flip_labels),
        Attack("inflate-count", "num_examples", inflate_num_examples),
        Attack("alie", "colluding", little_is_enough),
        Attack("ipm", "colluding", inner_product_manipulation),
    )
}
"""Attack name -> :class:`Attack`."""
