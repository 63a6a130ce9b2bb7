"""Weak coherent pulses through the fibre, honestly or under a photon-number-splitting (PNS) attack.

Honest channel: a pulse of mean photon number ``lam`` holds ``n ~ Poisson(lam)`` photons; each
reaches a detector and clicks it independently with probability ``eta`` (fibre x ``eta_Bob``), so
the number that arrive is ``Poisson(lam eta)`` and a pulse gives a photon click with probability
``1 - e^(-lam eta)``. Only clicked pulses are materialised: for them the arriving photon number is a
zero-truncated ``Poisson(lam eta)`` and the lost photons an independent ``Poisson(lam (1 - eta))``,
which together give the emitted photon number exactly (Poisson thinning). A photon click gives the
wrong bit with probability ``e_mis`` (in the [LMC05] model errors are per click, not per photon);
dark counts and double clicks are those of :mod:`qflare.qkd.channel`.

PNS attack (Brassard, Lütkenhaus, Mor, Sanders 2000): Eve measures each pulse's photon number
without disturbing it, blocks single-photon pulses, keeps one photon of every multi-photon pulse (she
measures it in the right basis after the basis announcement, so she knows the bit) and sends the rest
to Bob over a lossless channel. To keep Bob's signal detection rate at the honest value
``Q = 1 - e^(-mu eta)`` she forwards multi-photon pulses with probability ``t_m = min(1, Q / P_multi(mu))``
and, if that is not enough, single photons with ``t_1 = (Q - P_multi) / P_1`` (untouched). As in the
security proofs, Bob's detector efficiency counts as part of the channel Eve controls. She cannot
tell a decoy pulse from a signal pulse of the same photon number, so the same ``t_m, t_1`` apply to
every intensity: that is what the decoy states catch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError
from qflare.qkd.channel import Channel, bernoulli_indices
from qflare.qkd.decoy import p_multi
from qflare.qkd.source import Source, SourceKind

__all__ = ["PNSAttack", "PulseDetections", "transmit_pulses"]

Bits = NDArray[np.uint8]
Flags = NDArray[np.bool_]
_TRUNC = 24  # photon numbers above this have probability < 1e-20 for lam <= 1


@dataclass(frozen=True)
class PNSAttack:
    """The photon-number-splitting eavesdropper, tuned to the honest signal gain of ``channel``."""

    forward_multi: float
    forward_single: float

    @classmethod
    def matching(cls, channel: Channel, mu: float) -> PNSAttack:
        honest = -math.expm1(-mu * channel.transmittance)
        pm = p_multi(mu)
        t_m = min(1.0, honest / pm) if pm > 0 else 0.0
        t_1 = max(0.0, (honest - pm) / (mu * math.exp(-mu)))
        return cls(t_m, min(t_1, 1.0))


@dataclass(frozen=True)
class PulseDetections:
    """The detected pulses (Alice's and Bob's records), with what only the simulator knows.

    ``intensity`` is the index of the pulse's class in ``Source.classes``; ``pulses_by_class`` the
    pulses Alice sent in each class. ``multi_photon`` (Alice emitted two photons or more),
    ``eve_knows`` (Eve holds a copy of the photon) are simulator-only truths.
    """

    pulses_by_class: tuple[int, ...]
    intensity: Bits
    alice_bits: Bits
    alice_bases: Bits
    bob_bits: Bits
    bob_bases: Bits
    multi_photon: Flags
    eve_knows: Flags

    @property
    def detected(self) -> int:
        return int(self.bob_bits.size)


def _at_least_one(rng: np.random.Generator, lam: float, size: int) -> NDArray[np.int64]:
    """``size`` draws of ``Poisson(lam)`` conditioned on ``>= 1`` (inverse CDF)."""
    k = np.arange(_TRUNC + 1)
    pmf = np.exp(-lam + k * math.log(lam) - np.array([math.lgamma(i + 1) for i in k]))
    cdf = np.cumsum(pmf)
    u = cdf[0] + rng.random(size) * (1.0 - cdf[0])
    return np.minimum(np.searchsorted(cdf, u), _TRUNC).astype(np.int64)


def _clicks(
    rng: np.random.Generator, n: int, photon: NDArray[np.int64], dark: float
) -> tuple[NDArray[np.int64], Flags, Flags, Flags]:
    """Merge photon clicks with the two detectors' dark counts: clicked indices, has-photon, d0, d1."""
    dark0 = bernoulli_indices(rng, n, dark)
    dark1 = bernoulli_indices(rng, n, dark)
    d0 = np.isin(photon, dark0, assume_unique=True)
    d1 = np.isin(photon, dark1, assume_unique=True)
    dark_only = np.union1d(dark0[~np.isin(dark0, photon)], dark1[~np.isin(dark1, photon)])
    clicked = np.concatenate([photon, dark_only])
    has_photon = np.zeros(clicked.size, dtype=bool)
    has_photon[: photon.size] = True
    d0 = np.concatenate([d0, np.isin(dark_only, dark0)])
    d1 = np.concatenate([d1, np.isin(dark_only, dark1)])
    return clicked, has_photon, d0, d1


def _class(
    rng: np.random.Generator, n: int, lam: float, channel: Channel, pns: PNSAttack | None
) -> tuple[NDArray[np.int64], Flags, Flags]:
    """Photon clicks of ``n`` pulses of mean ``lam``: indices, multi-photon flag, Eve-knows flag."""
    eta = channel.transmittance
    if lam <= 0.0 or n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    if pns is None:
        photon = bernoulli_indices(rng, n, -math.expm1(-lam * eta))
        arrived = _at_least_one(rng, lam * eta, photon.size)
        lost = rng.poisson(lam * (1.0 - eta), size=photon.size)
        return photon, (arrived + lost) >= 2, np.zeros(photon.size, dtype=bool)
    p0 = math.exp(-lam)
    n0, n1, nm = (int(c) for c in rng.multinomial(n, [p0, lam * p0, max(0.0, 1.0 - p0 - lam * p0)]))
    singles = n0 + bernoulli_indices(rng, n1, pns.forward_single)
    multis = n0 + n1 + bernoulli_indices(rng, nm, pns.forward_multi)
    photon = np.concatenate([singles, multis])
    multi = np.zeros(photon.size, dtype=bool)
    multi[singles.size :] = True
    return photon, multi, multi.copy()


def transmit_pulses(
    pulses: int,
    channel: Channel,
    source: Source,
    *,
    pns: bool = False,
    eavesdrop: float = 0.0,
    rng: np.random.Generator,
) -> PulseDetections:
    """Send ``pulses`` weak coherent (or decoy-state) BB84 pulses and return the detected ones.

    Parameters
    ----------
    pulses:
        Pulses Alice sends (split over the source's intensities at random).
    channel:
        Loss, dark counts and misalignment.
    source:
        ``weak-coherent`` or ``decoy``.
    pns:
        Run the photon-number-splitting attack described in the module docstring.
    eavesdrop:
        Fraction of photon clicks an intercept-resend Eve attacks (as in :mod:`qflare.qkd.channel`).
    rng:
        Source of randomness.
    """
    if source.kind is SourceKind.SINGLE_PHOTON:
        raise ConfigError("transmit_pulses needs a weak-coherent or decoy source", reason="invalid_source")
    if pulses < 0:
        raise ConfigError("pulses must be >= 0", reason="invalid_pulses")
    if not (0.0 <= eavesdrop <= 1.0):
        raise ConfigError("eavesdrop must be a fraction in [0, 1]", reason="invalid_eavesdrop")
    attack = PNSAttack.matching(channel, source.signal) if pns else None
    classes = source.classes
    counts = tuple(int(c) for c in rng.multinomial(pulses, [p for _, _, p in classes]))
    parts: list[tuple[Bits, ...]] = []
    flags: list[tuple[Flags, Flags]] = []
    for index, ((_, lam, _), n) in enumerate(zip(classes, counts, strict=True)):
        photon, multi, knows = _class(rng, n, lam, channel, attack)
        order = np.argsort(photon, kind="stable")
        photon, multi, knows = photon[order], multi[order], knows[order]
        clicked, has_photon, d0, d1 = _clicks(rng, n, photon, channel.dark_count_prob)
        k = clicked.size
        pad = np.zeros(k - photon.size, dtype=bool)
        multi, knows = np.concatenate([multi, pad]), np.concatenate([knows, pad])
        c = rng.integers(0, 256, size=k, dtype=np.uint8)  # coins only for clicked pulses: same law
        alice_bit, alice_basis, bob_basis = c & 1, (c >> 1) & 1, (c >> 2) & 1
        eve_basis, eve_coin, bob_coin, tie_coin = (c >> 3) & 1, (c >> 4) & 1, (c >> 5) & 1, (c >> 6) & 1
        state_basis, state_bit = alice_basis, alice_bit
        if eavesdrop > 0.0:
            caught = has_photon & (rng.random(k) < eavesdrop)
            eve_bit = np.where(eve_basis == alice_basis, alice_bit, eve_coin)
            state_basis = np.where(caught, eve_basis, alice_basis)
            state_bit = np.where(caught, eve_bit, alice_bit)
        flip = (rng.random(k) < channel.misalignment).view(np.uint8)
        outcome = np.where(bob_basis == state_basis, state_bit ^ flip, bob_coin)
        click0 = (has_photon & (outcome == 0)) | d0
        click1 = (has_photon & (outcome == 1)) | d1
        bob_bit = np.where(click0 & click1, tie_coin, click1.view(np.uint8)).astype(np.uint8)
        parts.append(
            tuple(
                np.asarray(a, dtype=np.uint8) for a in (np.full(k, index), alice_bit, alice_basis, bob_bit, bob_basis)
            )
        )
        flags.append((multi & has_photon, knows & has_photon))
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return PulseDetections(
        counts,
        intensity=cat[0],
        alice_bits=cat[1],
        alice_bases=cat[2],
        bob_bits=cat[3],
        bob_bases=cat[4],
        multi_photon=np.concatenate([f[0] for f in flags]),
        eve_knows=np.concatenate([f[1] for f in flags]),
    )
