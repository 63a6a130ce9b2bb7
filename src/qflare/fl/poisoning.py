"""Model poisoning by one simulated malicious device: the attacks of :mod:`qflare.fl.attacks` applied
to a device's local data, its trained update and its claimed ``num_examples``.

Simulation only. The edge node builds a :class:`Poisoner` from its ``simulation_attack`` config and
refuses to unless ``QFLARE_SIMULATION=1`` (:func:`require_simulation`); the in-process driver
(:func:`qflare.fl.simulation.run_inprocess`) builds one per malicious client.

==================== ==================================================================== =========
kind                 what the malicious device sends                                      params
==================== ==================================================================== =========
``sign-flip``        ``-scale`` x its honest step                                         ``scale`` (1)
``scaling``          ``factor`` x its honest step (boosting)                              ``factor`` (10)
``gaussian``         its step plus N(0, sigma^2) per coordinate                           ``sigma`` (1), ``replace``
``label-flip``       an honest step trained on labels ``y -> C - 1 - y``                  none
``sample-inflation`` its sign-flipped step, claiming ``factor`` x its examples             ``factor`` (100), ``maximum``
``alie``             ``mu + z sigma`` of the honest steps (Baruch et al. 2019)            ``z`` (``alie_z(n, f)``)
``ipm``              ``-epsilon`` x the mean honest step (Xie et al. 2020)                ``epsilon`` (0.1)
==================== ==================================================================== =========

Sample-count inflation on its own sends an honest update (inflating an honest step only speeds
training up), so it is paired with a sign-flipped step, as in issue 9's replayed attack.

Colluding attacks (``alie``, ``ipm``) need the honest updates of the round. Who supplies them:

- the in-process driver gives the colluders the honest updates of the *current* round (the
  omniscient attacker of both papers: the strongest case);
- a malicious edge process cannot see the other devices' updates, so it *estimates* them: it trains
  ``estimates`` (default 3) further honest models from the same global model on bootstrap resamples
  of its own data, and uses those and its own honest update as ``honest``. Its spread is smaller than
  the real spread across non-IID devices, so this is a weaker ALIE/IPM than the papers'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qflare.environment import SIMULATION_ENV, environment
from qflare.errors import ConfigError
from qflare.fl.attacks import (
    alie_z,
    flip_labels,
    gaussian_noise,
    inflate_num_examples,
    inner_product_manipulation,
    little_is_enough,
    scale_update,
    sign_flip,
)
from qflare.types import NDArrays

__all__ = [
    "COLLUDING_KINDS",
    "POISONING_KINDS",
    "SIMULATION_ENV",
    "Poisoner",
    "choose_malicious",
    "require_simulation",
]

"""Environment flag (``1``) without which an edge node refuses a ``simulation_attack``."""

_PARAMS: dict[str, frozenset[str]] = {
    "sign-flip": frozenset({"scale"}),
    "scaling": frozenset({"factor"}),
    "gaussian": frozenset({"sigma", "replace"}),
    "label-flip": frozenset(),
    "sample-inflation": frozenset({"factor", "maximum", "scale"}),
    "alie": frozenset({"n", "f", "z", "estimates"}),
    "ipm": frozenset({"epsilon", "estimates"}),
}
POISONING_KINDS: tuple[str, ...] = tuple(_PARAMS)
"""``--attack`` names, in table order."""
COLLUDING_KINDS = frozenset({"alie", "ipm"})
"""Kinds that need the round's honest updates."""


def require_simulation(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigError`` unless ``QFLARE_SIMULATION=1``: a poisoning hook must never run by accident."""
    allowed = environment().simulation if environ is None else environ.get(SIMULATION_ENV) == "1"
    if not allowed:
        raise ConfigError(
            f"simulation_attack is set but {SIMULATION_ENV}=1 is not: this device would poison the federation; "
            "refusing (it is for qflare simulate only)",
            reason="simulation_attack_refused",
        )


def choose_malicious(device_ids: Sequence[str], fraction: float, seed: int) -> tuple[str, ...]:
    """``round(fraction x n)`` devices, chosen from ``seed`` alone (reproducible), in ``device_ids`` order."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"malicious fraction must lie in [0, 1], got {fraction}", reason="invalid_attack_params")
    k = round(fraction * len(device_ids))
    picked = np.random.default_rng(np.random.SeedSequence([seed, 9])).choice(len(device_ids), size=k, replace=False)
    return tuple(device_ids[i] for i in sorted(int(i) for i in picked))


@dataclass(frozen=True)
class Poisoner:
    """One malicious device's attack.

    Parameters
    ----------
    kind:
        One of :data:`POISONING_KINDS`.
    params:
        The kind's parameters (see the module table); unknown keys raise ``ConfigError``.
    num_classes:
        For ``label-flip``: the task's classes.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _PARAMS:
            raise ConfigError(
                f"unknown attack {self.kind!r}; choose from {', '.join(POISONING_KINDS)}", reason="unknown_attack"
            )
        extra = sorted(set(self.params) - _PARAMS[self.kind])
        if extra:
            accepted = ", ".join(sorted(_PARAMS[self.kind])) or "none"
            raise ConfigError(f"attack {self.kind}: unknown parameter(s) {extra} (accepted: {accepted})",
                              reason="invalid_attack_params")
        if self.kind == "label-flip" and (self.num_classes is None or self.num_classes < 2):
            raise ConfigError("label-flip needs a classification task", reason="invalid_attack_params")
        if self.kind == "alie" and "z" not in self.params:
            alie_z(int(self.params.get("n", 0)), int(self.params.get("f", 0)))  # n and f must make sense

    @property
    def colluding(self) -> bool:
        """Whether :meth:`poison_update` needs ``honest``."""
        return self.kind in COLLUDING_KINDS

    @property
    def estimates(self) -> int:
        """How many extra honest models an edge colluder trains to estimate the honest updates."""
        return int(self.params.get("estimates", 3))

    def poison_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels the device trains on: flipped for ``label-flip``, else unchanged."""
        if self.kind != "label-flip":
            return labels
        assert self.num_classes is not None
        return flip_labels(labels, num_classes=self.num_classes)

    def poison_update(
        self,
        update: NDArrays,
        num_examples: int,
        *,
        reference: NDArrays,
        rng: np.random.Generator,
        honest: Sequence[NDArrays] = (),
    ) -> tuple[NDArrays, int]:
        """The ``(arrays, num_examples)`` the device sends instead of its honest ``update``.

        ``update`` and ``reference`` (the round's global model) are full weights; ``honest`` the honest
        updates a colluder knows (full weights).
        """
        p = self.params
        k = self.kind
        if k == "sign-flip":
            return sign_flip(update, scale=float(p.get("scale", 1.0)), reference=reference), num_examples
        if k == "scaling":
            return scale_update(update, factor=float(p.get("factor", 10.0)), reference=reference), num_examples
        if k == "gaussian":
            noisy = gaussian_noise(update, sigma=float(p.get("sigma", 1.0)), rng=rng,
                                   replace=bool(p.get("replace", False)), reference=reference)
            return noisy, num_examples
        if k == "label-flip":
            return update, num_examples
        if k == "sample-inflation":
            claimed = inflate_num_examples(num_examples, factor=float(p.get("factor", 100.0)),
                                           maximum=int(p.get("maximum", 10_000_000)))
            return sign_flip(update, scale=float(p.get("scale", 1.0)), reference=reference), claimed
        if not honest:
            raise ConfigError(f"attack {k} needs the honest updates", reason="invalid_attack_params")
        if k == "alie":
            z = p.get("z")
            n, f = int(p.get("n", 0)), int(p.get("f", 0))
            zz = float(z) if z is not None else alie_z(n, f)
            return little_is_enough(honest, n=max(n, 2), f=max(f, 1), z=zz, reference=reference), num_examples
        eps = float(p.get("epsilon", 0.1))
        if not math.isfinite(eps):
            raise ConfigError("ipm epsilon must be finite", reason="invalid_attack_params")
        return inner_product_manipulation(honest, epsilon=eps, reference=reference), num_examples
