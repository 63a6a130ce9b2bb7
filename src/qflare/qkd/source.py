"""What Alice's transmitter emits: ideal single photons, weak coherent pulses, or decoy-state pulses.

A phase-randomised weak coherent pulse of mean photon number ``mu`` carries ``n`` photons with the
Poisson probability ``e^-mu mu^n / n!``; pulses with ``n >= 2`` can be split by an eavesdropper. The
decoy-state source (vacuum + weak decoy, Ma, Qi, Zhao and Lo 2005) picks per pulse, at random, the
signal intensity ``mu``, the weak decoy ``nu`` or the vacuum, and announces the choice after Bob's
detections; only signal pulses give key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from qflare.errors import ConfigError

__all__ = ["Source", "SourceKind"]


class SourceKind(StrEnum):
    """The three transmitters the simulator models."""

    SINGLE_PHOTON = "single-photon"
    WEAK_COHERENT = "weak-coherent"
    DECOY = "decoy"


def _bad(message: str) -> ConfigError:
    return ConfigError(message, reason="invalid_source")


@dataclass(frozen=True)
class Source:
    """Alice's source.

    Parameters
    ----------
    kind:
        ``single-photon``, ``weak-coherent`` (signal pulses only; GLLP key length) or ``decoy``.
    signal:
        Mean photon number ``mu`` of signal pulses, in (0, 1] (unused by ``single-photon``).
    decoy:
        Mean photon number ``nu`` of the weak decoy, in (0, signal) (``decoy`` only).
    p_signal, p_decoy, p_vacuum:
        Probabilities Alice picks each intensity (``decoy`` only; each in (0, 1), summing to 1).
        Without decoy or vacuum pulses the decoy bounds are undefined.
    """

    kind: SourceKind = SourceKind.SINGLE_PHOTON
    signal: float = 0.5
    decoy: float = 0.1
    p_signal: float = 0.8
    p_decoy: float = 0.1
    p_vacuum: float = 0.1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", SourceKind(self.kind))
        except ValueError:
            choices = ", ".join(k.value for k in SourceKind)
            raise _bad(f"source kind {self.kind!r} is not one of {choices}") from None
        if self.kind is SourceKind.SINGLE_PHOTON:
            return
        if not (math.isfinite(self.signal) and 0.0 < self.signal <= 1.0):
            raise _bad(f"signal mean photon number mu must lie in (0, 1], got {self.signal}")
        if self.kind is SourceKind.WEAK_COHERENT:
            return
        if not (math.isfinite(self.decoy) and 0.0 < self.decoy <= 1.0):
            raise _bad(f"decoy mean photon number nu must lie in (0, 1], got {self.decoy}")
        if self.decoy >= self.signal:
            raise _bad(
                f"decoy mean photon number nu ({self.decoy}) must be below the signal mu ({self.signal}): "
                "the vacuum + weak decoy bound on Y1 divides by nu (mu - nu)"
            )
        probs = {"p_signal": self.p_signal, "p_decoy": self.p_decoy, "p_vacuum": self.p_vacuum}
        for name, p in probs.items():
            if not (math.isfinite(p) and 0.0 < p < 1.0):
                raise _bad(f"{name} must lie in (0, 1) for the decoy bounds to be defined, got {p}")
        if abs(sum(probs.values()) - 1.0) > 1e-9:
            raise _bad(f"p_signal + p_decoy + p_vacuum must be 1, got {sum(probs.values())}")

    @classmethod
    def single_photon(cls) -> Source:
        return cls(SourceKind.SINGLE_PHOTON)

    @classmethod
    def weak_coherent(cls, mu: float = 0.1) -> Source:
        return cls(SourceKind.WEAK_COHERENT, signal=mu)

    @classmethod
    def decoy_state(
        cls, mu: float = 0.5, nu: float = 0.1, *, p_signal: float = 0.8, p_decoy: float = 0.1, p_vacuum: float = 0.1
    ) -> Source:
        return cls(SourceKind.DECOY, signal=mu, decoy=nu, p_signal=p_signal, p_decoy=p_decoy, p_vacuum=p_vacuum)

    @property
    def classes(self) -> tuple[tuple[str, float, float], ...]:
        """``(name, mean photon number, probability)`` of each intensity Alice uses."""
        if self.kind is SourceKind.DECOY:
            return (
                ("signal", self.signal, self.p_signal),
                ("decoy", self.decoy, self.p_decoy),
                ("vacuum", 0.0, self.p_vacuum),
            )
        return (("signal", self.signal, 1.0),)
