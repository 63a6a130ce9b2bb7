"""Key-length bounds and the repeaterless capacity of a lossy channel.

Secret key length (finite size)
    For BB84 with single photons, Shor and Preskill [SP00] give the asymptotic secret fraction of the
    sifted key as ``r = 1 - h(e_phase) - leak_EC/n``; with symmetric bases the phase error rate equals
    the bit error rate ``e`` (GLLP [GLLP04] extends the same formula to imperfect devices, and reduces to
    it for a single-photon source). For a finite key we follow the form of Tomamichel, Lim, Gisin and
    Renner [TLGR12]::

        l = n * (1 - h(e_k + mu)) - leak_EC - log2(2 / (eps_sec**2 * eps_cor))
        mu = sqrt((n + k) / (n * k) * (k + 1) / k * ln(2 / eps_sec))

    where ``n`` is the number of key bits after the ``k`` sampled bits were disclosed and removed,
    ``e_k`` the error rate seen in that sample, ``mu`` the statistical deviation of the error rate on
    the remaining bits from the sample's (random sampling without replacement), ``leak_EC`` every bit
    disclosed by error correction and its verification hash, ``eps_cor`` the verification hash's
    collision probability and ``eps_sec`` the secrecy parameter.

    [TLGR12] uses the measured rate on the *other* basis and a tolerated error ``Q_tol`` fixed in
    advance; estimating on a random sample of the sifted key and using the measured rate is a
    simplification of this simulator (the estimate is from the same symmetric-basis data either way).

PLOB bound
    Pirandola, Laurenza, Ottaviani and Banchi [PLOB17]: no repeaterless protocol over a pure-loss
    channel of transmittance ``eta`` can exceed ``-log2(1 - eta)`` secret bits per channel use.

References
----------
[SP00] P. W. Shor, J. Preskill, Phys. Rev. Lett. 85, 441 (2000).
[GLLP04] D. Gottesman, H.-K. Lo, N. Lütkenhaus, J. Preskill, Quant. Inf. Comput. 4, 325 (2004).
[TLGR12] M. Tomamichel, C. C. W. Lim, N. Gisin, R. Renner, Nat. Commun. 3, 634 (2012).
[PLOB17] S. Pirandola, R. Laurenza, C. Ottaviani, L. Banchi, Nat. Commun. 8, 15043 (2017).
"""

from __future__ import annotations

import math

from qflare.qkd.channel import Channel

__all__ = [
    "CASCADE_EFFICIENCY",
    "asymptotic_key_rate",
    "binary_entropy",
    "finite_size_deviation",
    "plob_bound",
    "secret_key_length",
]

CASCADE_EFFICIENCY = 1.2
"""Typical ``leak_EC / (n h(e))`` of Cascade; used only by the analytic model curve."""


def binary_entropy(x: float) -> float:
    """``h(x) = -x log2 x - (1-x) log2(1-x)``, with ``h = 1`` from ``x >= 0.5`` on."""
    if x <= 0.0:
        return 0.0
    if x >= 0.5:
        return 1.0
    return -x * math.log2(x) - (1.0 - x) * math.log2(1.0 - x)


def finite_size_deviation(n: int, k: int, eps_sec: float) -> float:
    """``mu`` of [TLGR12]: how far the error rate on ``n`` bits may exceed that of a ``k``-bit sample."""
    if n <= 0 or k <= 0:
        return math.inf
    return math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2.0 / eps_sec))


def secret_key_length(n: int, k: int, sample_qber: float, leaked_bits: int, *, eps_sec: float, eps_cor: float) -> int:
    """Secure key length in bits (possibly <= 0: no key), by the finite-size bound above.

    Parameters
    ----------
    n:
        Corrected key bits fed to privacy amplification.
    k:
        Bits sampled (and discarded) to estimate the error rate.
    sample_qber:
        Error rate observed in the sample.
    leaked_bits:
        Bits disclosed by error correction, including the verification hash.
    eps_sec, eps_cor:
        Secrecy and correctness parameters.
    """
    mu = finite_size_deviation(n, k, eps_sec)
    length = n * (1.0 - binary_entropy(sample_qber + mu)) - leaked_bits
    length -= math.log2(2.0 / (eps_sec**2 * eps_cor))
    return math.floor(length)


def plob_bound(eta: float) -> float:
    """Secret-key capacity ``-log2(1 - eta)`` of a pure-loss channel (bits per channel use)."""
    if eta >= 1.0:
        return math.inf
    return -math.log2(1.0 - eta)


def asymptotic_key_rate(channel: Channel, *, ec_efficiency: float = CASCADE_EFFICIENCY) -> float:
    """Expected secret bits per pulse for infinitely many pulses (the analytic model curve).

    ``p_click = 1 - (1 - eta)(1 - p_d)^2``; the error rate counts misalignment on signal clicks and
    half of the dark-only clicks; the rate is ``p_click / 2 * (1 - f h(e) - h(e))`` (sifting halves it).
    """
    eta = channel.transmittance
    pd = channel.dark_count_prob
    no_dark = (1.0 - pd) ** 2
    p_click = 1.0 - (1.0 - eta) * no_dark
    if p_click <= 0.0:
        return 0.0
    dark_only = (1.0 - eta) * (1.0 - no_dark)
    errors = eta * (channel.misalignment * (1.0 - pd) + 0.5 * pd) + 0.5 * dark_only
    e = errors / p_click
    rate = 0.5 * p_click * (1.0 - ec_efficiency * binary_entropy(e) - binary_entropy(e))
    return max(rate, 0.0)
