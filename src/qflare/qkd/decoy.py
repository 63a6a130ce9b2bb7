"""Weak coherent pulses: GLLP, the vacuum + weak decoy-state estimates, and the analytic rate curves.

Notation (Lo, Ma and Chen [LMC05]; Ma, Qi, Zhao and Lo [MQZL05]): for intensity ``k`` the gain
``Q_k`` is the detection probability per pulse, ``E_k`` the error rate of its sifted bits, ``Y_n``
the yield (detection probability) of an ``n``-photon pulse, ``e_n`` its error rate, ``Y_0`` the
background (dark-count) rate with ``e_0 = 1/2``, ``q = 1/2`` the BB84 sifting factor, ``f`` the error
correction inefficiency. The GLLP [GLLP04] secret key rate per pulse is::

    R >= q { -Q_mu f H(E_mu) + Q_1 [1 - H(e_1)] },   Q_1 = Y_1 mu e^-mu

Vacuum + weak decoy [MQZL05, eqs. (34)-(35)], valid for ``0 < nu < mu``::

    Y_1 >= Y_1^L = mu / (mu nu - nu^2) * (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y_0)
    e_1 <= e_1^U = (E_nu Q_nu e^nu - e_0 Y_0) / (Y_1^L nu)

Without decoys (GLLP for weak pulses) every multi-photon pulse is assumed insecure and detected:
``Q_1 >= Q_mu - P_multi(mu)`` with ``P_multi = 1 - e^-mu (1 + mu)``, and every error is put on the
single photons, ``e_1 <= E_mu Q_mu / Q_1``.

The analytic model of the channel is that of [LMC05]: ``eta = 10^(-alpha L / 10) eta_Bob``,
``Y_n = Y_0 + 1 - (1 - eta)^n``, ``Q_mu = Y_0 + 1 - e^(-eta mu)``,
``E_mu Q_mu = e_0 Y_0 + e_det (1 - e^(-eta mu))``.

References
----------
[GLLP04] D. Gottesman, H.-K. Lo, N. Lütkenhaus, J. Preskill, Quant. Inf. Comput. 4, 325 (2004).
[LMC05] H.-K. Lo, X. Ma, K. Chen, "Decoy state quantum key distribution", PRL 94, 230504 (2005).
[MQZL05] X. Ma, B. Qi, Y. Zhao, H.-K. Lo, "Practical decoy state for quantum key distribution",
PRA 72, 012326 (2005).
[LCWXZ14] C. C. W. Lim, M. Curty, N. Walenta, F. Xu, H. Zbinden, "Concise security bounds for practical
decoy-state quantum key distribution", PRA 89, 022307 (2014).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from qflare.errors import ConfigError
from qflare.qkd.keyrate import binary_entropy, plob_bound

__all__ = [
    "GYS",
    "FiniteEstimate",
    "decoy_finite_key",
    "gllp_finite_key",
    "hoeffding",
    "LinkParams",
    "VacuumWeakBounds",
    "max_distance",
    "optimal_rate",
    "p_multi",
    "rate_decoy_infinite",
    "rate_no_decoy",
    "rate_single_photon",
    "rate_vacuum_weak",
    "vacuum_weak_bounds",
]

SIFT = 0.5
E0 = 0.5


@dataclass(frozen=True)
class LinkParams:
    """The experimental parameters of [LMC05] Table I.

    Parameters
    ----------
    alpha_db_per_km:
        Fibre loss.
    eta_bob:
        Bob's transmittance times detector efficiency.
    y0:
        Background rate (dark counts) per pulse, both detectors.
    e_detector:
        Probability a photon hits the wrong detector.
    f_ec:
        Error-correction inefficiency ``f(E)``.
    """

    alpha_db_per_km: float = 0.21
    eta_bob: float = 0.045
    y0: float = 1.7e-6
    e_detector: float = 0.033
    f_ec: float = 1.22

    def eta(self, distance_km: float) -> float:
        """Total transmittance ``10^(-alpha L / 10) eta_Bob``."""
        return float(10.0 ** (-self.alpha_db_per_km * distance_km / 10.0)) * self.eta_bob

    def plob(self, distance_km: float) -> float:
        return plob_bound(self.eta(distance_km))


GYS = LinkParams()
"""Gobby, Yuan, Shields (APL 84, 3762, 2004) at 1550 nm, as used in [LMC05]: alpha 0.21 dB/km,
eta_Bob 4.5%, Y0 1.7e-6, e_detector 3.3%, f(E) 1.22."""


def p_multi(mu: float) -> float:
    """Probability that a Poisson pulse of mean ``mu`` holds two photons or more."""
    return -math.expm1(-mu) - mu * math.exp(-mu)


def _gain(p: LinkParams, eta: float, mu: float) -> tuple[float, float]:
    """``(Q_mu, E_mu Q_mu)`` of the [LMC05] channel model."""
    signal = -math.expm1(-eta * mu)
    return p.y0 + signal, E0 * p.y0 + p.e_detector * signal


def _gllp(p: LinkParams, q: float, eq: float, q1: float, e1: float) -> float:
    if q1 <= 0.0 or q <= 0.0:
        return 0.0
    rate = SIFT * (-q * p.f_ec * binary_entropy(eq / q) + q1 * (1.0 - binary_entropy(e1)))
    return max(rate, 0.0)


def rate_single_photon(p: LinkParams, distance_km: float) -> float:
    """An ideal single-photon source: ``Q = Y_1``, ``E = e_1`` (the rate every other source approaches)."""
    eta = p.eta(distance_km)
    y1 = p.y0 + eta - p.y0 * eta
    ey1 = E0 * p.y0 + p.e_detector * eta
    return _gllp(p, y1, ey1, y1, ey1 / y1)


def rate_decoy_infinite(p: LinkParams, distance_km: float, mu: float) -> float:
    """Decoy states with perfect estimation (infinitely many decoys): the true ``Y_1``, ``e_1``."""
    eta = p.eta(distance_km)
    q, eq = _gain(p, eta, mu)
    y1 = p.y0 + eta - p.y0 * eta
    e1 = (E0 * p.y0 + p.e_detector * eta) / y1
    return _gllp(p, q, eq, y1 * mu * math.exp(-mu), e1)


@dataclass(frozen=True)
class VacuumWeakBounds:
    """``Y_1^L`` and ``e_1^U`` of [MQZL05]; ``defined`` is False when ``Y_1^L <= 0`` (no e_1 bound)."""

    y1_lower: float
    e1_upper: float

    @property
    def defined(self) -> bool:
        return self.y1_lower > 0.0


def vacuum_weak_bounds(
    mu: float, nu: float, q_mu: float, q_nu: float, eq_nu: float, y0: float, ey0: float | None = None
) -> VacuumWeakBounds:
    """The vacuum + weak decoy bounds from measured gains.

    Parameters
    ----------
    mu, nu:
        Signal and decoy mean photon numbers (``0 < nu < mu``).
    q_mu, q_nu:
        Gains (upper bound for ``q_mu``, lower bound for ``q_nu`` in the finite-size case).
    eq_nu:
        ``E_nu Q_nu`` (an upper bound in the finite-size case).
    y0:
        Vacuum yield (an upper bound in the finite-size case).
    ey0:
        ``e_0 Y_0`` (a lower bound in the finite-size case); ``y0 / 2`` when omitted.

    Raises
    ------
    ConfigError
        ``nu`` not in ``(0, mu)``: the bound divides by ``nu (mu - nu)``.
    """
    if not (0.0 < nu < mu):
        raise ConfigError(
            f"decoy mean photon number nu={nu} must lie in (0, mu={mu}) for the decoy bounds", reason="invalid_source"
        )
    ey0 = E0 * y0 if ey0 is None else ey0
    y1 = (
        mu
        / (mu * nu - nu * nu)
        * (q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu * nu / (mu * mu) - (mu * mu - nu * nu) / (mu * mu) * y0)
    )
    if y1 <= 0.0:
        return VacuumWeakBounds(y1, 0.5)
    e1 = (eq_nu * math.exp(nu) - ey0) / (y1 * nu)
    return VacuumWeakBounds(y1, min(max(e1, 0.0), 0.5))


def rate_vacuum_weak(p: LinkParams, distance_km: float, mu: float, nu: float = 0.05) -> float:
    """Vacuum + weak decoy ([MQZL05]) with the model gains (asymptotic: no statistical fluctuation)."""
    if nu >= mu:
        return 0.0
    eta = p.eta(distance_km)
    q_mu, eq_mu = _gain(p, eta, mu)
    q_nu, eq_nu = _gain(p, eta, nu)
    b = vacuum_weak_bounds(mu, nu, q_mu, q_nu, eq_nu, p.y0)
    if not b.defined:
        return 0.0
    return _gllp(p, q_mu, eq_mu, b.y1_lower * mu * math.exp(-mu), b.e1_upper)


def rate_no_decoy(p: LinkParams, distance_km: float, mu: float) -> float:
    """GLLP for weak pulses without decoys: all multi-photon pulses insecure (``Q_1 >= Q_mu - P_multi``)."""
    eta = p.eta(distance_km)
    q, eq = _gain(p, eta, mu)
    q1 = q - p_multi(mu)
    if q1 <= 0.0:
        return 0.0
    return _gllp(p, q, eq, q1, min(eq / q1, 0.5))


def optimal_rate(rate: Callable[[float], float], *, low: float = 1e-4, high: float = 1.0) -> tuple[float, float]:
    """``(best rate, best mu)`` over ``mu`` in ``[low, high]``: a log grid, then golden-section refinement."""
    grid = [low * (high / low) ** (i / 120) for i in range(121)]
    values = [rate(m) for m in grid]
    best = max(range(len(grid)), key=lambda i: values[i])
    if values[best] <= 0.0:
        return 0.0, grid[best]
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        c, d = b - g * (b - a), a + g * (b - a)
        if rate(c) >= rate(d):
            b = d
        else:
            a = c
    mu = (a + b) / 2.0
    return max(rate(mu), values[best]), mu if rate(mu) >= values[best] else grid[best]


def max_distance(rate_at: Callable[[float], float], *, low: float = 0.0, high: float = 400.0) -> float:
    """The fibre length (km) where ``rate_at`` drops to zero, by bisection (0 if no key even at ``low``)."""
    if rate_at(low) <= 0.0:
        return low
    if rate_at(high) > 0.0:
        return high
    for _ in range(60):
        mid = (low + high) / 2.0
        if rate_at(mid) > 0.0:
            low = mid
        else:
            high = mid
    return low


# ---------------------------------------------------------------------------------------------------
# Finite size


@dataclass(frozen=True)
class FiniteEstimate:
    """A finite-size key length and the figures behind it (sifted yields: per pulse, both bases halved)."""

    length: float
    single_photon_bits: float
    vacuum_bits: float
    phase_error: float
    figures: dict[str, float]
    defined: bool = True


def hoeffding(count: float, eps: float) -> float:
    """``sqrt(count / 2 * ln(1/eps))``: the deviation of [LCWXZ14] eq. (2) for ``count`` detections."""
    return math.sqrt(max(count, 0.0) / 2.0 * math.log(1.0 / eps))


def _pa_cost(eps_sec: float, eps_cor: float) -> float:
    return 6.0 * math.log2(21.0 / eps_sec) + math.log2(2.0 / eps_cor)


def decoy_finite_key(
    *,
    mu: float,
    nu: float,
    pulses: tuple[int, int, int],
    sifted: tuple[int, int, int],
    errors_decoy: int,
    errors_vacuum: int,
    key_bits: int,
    leaked_bits: int,
    eps_sec: float,
    eps_cor: float,
) -> FiniteEstimate:
    """Key length of the vacuum + weak decoy protocol for a finite number of pulses.

    The gains and error gains of each intensity are bounded with the Hoeffding deviation of Lim,
    Curty, Walenta, Xu and Zbinden [LCWXZ14, eq. (2)] (``n_k +- sqrt(n/2 ln(1/eps_1))`` with ``n``
    all sifted detections, ``eps_1 = eps_sec/21``), plugged into the vacuum + weak decoy bounds of
    [MQZL05] (``Y_1^L`` from the lower decoy and upper signal gains and the upper vacuum yield,
    ``e_1^U`` from the upper decoy error gain and the lower vacuum error gain). The key length is
    [LCWXZ14] eq. (1) restricted to signal pulses::

        l = s_0 + s_1 (1 - h(e_1^U + g)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor)

    with ``s_1 = N_mu mu e^-mu Y_1^L`` and ``s_0 = N_mu e^-mu Y_0^L`` scaled to the key bits left after
    the error-rate sample, and ``g = sqrt(ln(1/eps_1) / (2 s_1))`` the Hoeffding deviation of the
    single photons' phase errors from their bound.

    Parameters
    ----------
    pulses, sifted:
        Pulses sent and sifted detections per intensity (signal, decoy, vacuum).
    errors_decoy, errors_vacuum:
        Errors in the (all disclosed) sifted decoy and vacuum bits.
    key_bits:
        Signal bits left for the key after the error-rate sample was removed.
    leaked_bits:
        Bits disclosed by error correction and its verification.
    eps_sec, eps_cor:
        Secrecy and correctness parameters.
    """
    eps1 = eps_sec / 21.0
    (n_s, n_d, n_v), (s_s, s_d, s_v) = pulses, sifted
    dn = hoeffding(s_s + s_d + s_v, eps1)
    dm = hoeffding(errors_decoy + errors_vacuum, eps1)
    y0_u = min(1.0, (s_v + dn) / n_v)
    y0_l = max(0.0, s_v - dn) / n_v
    ey0_l = max(0.0, errors_vacuum - dm) / n_v
    q_mu_u = (s_s + dn) / n_s
    q_nu_l = max(0.0, s_d - dn) / n_d
    eq_nu_u = (errors_decoy + dm) / n_d
    bounds = vacuum_weak_bounds(mu, nu, q_mu_u, q_nu_l, eq_nu_u, y0_u, ey0_l)
    figures = {
        "gain_signal": s_s / n_s,
        "gain_decoy": s_d / n_d,
        "gain_vacuum": s_v / n_v,
        "y0_upper": y0_u,
        "y1_lower": bounds.y1_lower,
        "e1_upper": bounds.e1_upper,
    }
    if not bounds.defined or s_s == 0:
        return FiniteEstimate(-math.inf, 0.0, 0.0, 0.5, figures, defined=False)
    share = key_bits / s_s
    s1 = min(float(key_bits), n_s * mu * math.exp(-mu) * bounds.y1_lower * share)
    s0 = min(float(key_bits) - s1, n_s * math.exp(-mu) * y0_l * share)
    phase = min(0.5, bounds.e1_upper + math.sqrt(math.log(1.0 / eps1) / (2.0 * s1)))
    length = s0 + s1 * (1.0 - binary_entropy(phase)) - leaked_bits - _pa_cost(eps_sec, eps_cor)
    figures |= {"single_photon_bits_lower": s1, "vacuum_bits_lower": s0, "phase_error_upper": phase}
    return FiniteEstimate(length, s1, s0, phase, figures)


def gllp_finite_key(
    *,
    mu: float,
    pulses: int,
    sifted: int,
    key_bits: int,
    bit_error_upper: float,
    leaked_bits: int,
    eps_sec: float,
    eps_cor: float,
) -> FiniteEstimate:
    """Key length for weak pulses without decoys: GLLP with every multi-photon pulse insecure.

    The sifted multi-photon detections are at most ``N P_multi(mu) / 2`` (Alice's source statistics:
    the mean, not a bound; sifting is independent of the photon number), and the signal gain is
    bounded below by the [LCWXZ14] Hoeffding deviation; ``Delta`` is their ratio. Then
    ``s_1 = n (1 - Delta)``, ``e_1 <= e / (1 - Delta)`` (every error on the single photons) and
    ``l = s_1 (1 - h(e_1)) - leak_EC - log2(2 / (eps_sec^2 eps_cor))``.
    """
    eps1 = eps_sec / 21.0
    sifted_low = max(0.0, sifted - hoeffding(sifted, eps1))
    multi = pulses * p_multi(mu) * SIFT
    delta = multi / sifted_low if sifted_low > 0 else math.inf
    figures = {"gain_signal": sifted / pulses if pulses else 0.0, "multi_photon_fraction_upper": min(delta, 1.0)}
    if delta >= 1.0:
        return FiniteEstimate(-math.inf, 0.0, 0.0, 0.5, figures, defined=False)
    s1 = key_bits * (1.0 - delta)
    e1 = min(0.5, bit_error_upper / (1.0 - delta))
    length = s1 * (1.0 - binary_entropy(e1)) - leaked_bits - math.log2(2.0 / (eps_sec**2 * eps_cor))
    figures |= {"single_photon_bits_lower": s1, "phase_error_upper": e1}
    return FiniteEstimate(length, s1, 0.0, e1, figures)
