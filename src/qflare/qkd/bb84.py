"""BB84 end to end: quantum phase, sifting, error estimation, Cascade, privacy amplification.

:func:`run_bb84` is deterministic for a given ``seed``. Its :class:`BB84Result` reports every stage;
``key`` holds the final secret key (Alice's copy, which Bob's equals after verified correction).

Protocol, in order
    1. :func:`qflare.qkd.channel.transmit`: ``pulses`` single-photon pulses, Bob's detections.
    2. Sifting: Bob announces his bases, Alice keeps the positions where they match.
    3. Estimation: a random sample (``sample_fraction`` of the sifted bits) is disclosed and compared;
       those bits are removed from the key. Abort if the sample's error rate exceeds ``qber_abort``.
    4. Error correction: Cascade; its disclosed parities are counted. A 64-bit Toeplitz hash with a
       fresh public seed verifies that Bob's key equals Alice's (``eps_cor = 2**-64``); abort if not.
    5. Key length: the finite-size bound of :mod:`qflare.qkd.keyrate` (abort if not positive),
       rounded down to whole bytes.
    6. Privacy amplification: a Toeplitz hash from a public random seed compresses the key to that
       length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qflare.errors import ConfigError, QKDError
from qflare.qkd.cascade import cascade_correct
from qflare.qkd.channel import Channel, transmit
from qflare.qkd.keyrate import secret_key_length
from qflare.qkd.toeplitz import toeplitz_hash, toeplitz_seed

__all__ = ["BB84Result", "run_bb84"]

_VERIFY_BITS = 64


@dataclass(frozen=True)
class BB84Result:
    """Outcome of one BB84 run (every count in bits unless named otherwise).

    Parameters
    ----------
    pulses:
        Pulses Alice sent.
    detected:
        Pulses Bob detected (signal or dark count).
    sifted_bits:
        Detections where Alice's and Bob's bases matched.
    sample_bits:
        Sifted bits disclosed to estimate the error rate (and removed from the key).
    qber_estimated:
        Error rate in the disclosed sample.
    qber_true:
        Error rate over all sifted bits (known only to the simulator).
    leaked_bits:
        Bits disclosed by error correction and its verification hash.
    corrected_errors:
        Bits Cascade flipped.
    final_key_bits:
        Length of the secret key (a multiple of 8; 0 when aborted).
    key:
        The secret key (``final_key_bits // 8`` bytes); empty when aborted.
    aborted:
        Whether the run produced no key.
    abort_reason:
        ``"qber_above_threshold"``, ``"ec_verification_failed"``, ``"no_secret_key"`` or ``None``.
    channel:
        The channel model used.
    eavesdrop:
        Fraction of pulses Eve intercepted.
    """

    pulses: int
    detected: int
    sifted_bits: int
    sample_bits: int
    qber_estimated: float
    qber_true: float
    leaked_bits: int
    corrected_errors: int
    final_key_bits: int
    key: bytes = field(repr=False)
    aborted: bool
    abort_reason: str | None
    channel: Channel
    eavesdrop: float

    @property
    def key_rate(self) -> float:
        """Secret bits per pulse sent."""
        return self.final_key_bits / self.pulses if self.pulses else 0.0

    def require_key(self) -> bytes:
        """The key, or :class:`QKDError` (``reason="qber_abort"`` or ``"no_secret_key"``) if aborted."""
        if not self.aborted:
            return self.key
        reason = "qber_abort" if self.abort_reason == "qber_above_threshold" else "no_secret_key"
        raise QKDError(
            f"BB84 link aborted ({self.abort_reason}); estimated QBER {self.qber_estimated:.4f}", reason=reason
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (no key material)."""
        return {
            "pulses": self.pulses,
            "distance_km": self.channel.distance_km,
            "eavesdrop": self.eavesdrop,
            "transmittance": self.channel.transmittance,
            "detected": self.detected,
            "sifted_bits": self.sifted_bits,
            "sample_bits": self.sample_bits,
            "qber_estimated": self.qber_estimated,
            "qber_true": self.qber_true,
            "leaked_bits": self.leaked_bits,
            "corrected_errors": self.corrected_errors,
            "final_key_bits": self.final_key_bits,
            "key_rate_per_pulse": self.key_rate,
            "aborted": self.aborted,
            "abort_reason": self.abort_reason,
        }


def _check(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low < value < high):
        raise ConfigError(f"{name} must lie in ({low}, {high}), got {value}", reason="invalid_bb84_parameter")


def run_bb84(
    pulses: int,
    channel: Channel | None = None,
    *,
    eavesdrop: float = 0.0,
    seed: int | None = None,
    sample_fraction: float = 0.1,
    qber_abort: float = 0.11,
    cascade_passes: int = 6,
    eps_sec: float = 1e-10,
) -> BB84Result:
    """Simulate one BB84 session and distil a secret key.

    Parameters
    ----------
    pulses:
        Pulses to send.
    channel:
        Link model; ``Channel()`` (10 km) when omitted.
    eavesdrop:
        Fraction of pulses an intercept-resend eavesdropper attacks.
    seed:
        Seed for every random choice (quantum and public); fresh OS entropy when ``None``.
    sample_fraction:
        Share of the sifted bits disclosed to estimate the error rate.
    qber_abort:
        Abort when the estimated error rate exceeds this (11% by default, just below the
        ``1 - 2 h(e) = 0`` point of Shor-Preskill).
    cascade_passes:
        Cascade passes (6: the original 4 left ~2 in 1000 small keys uncorrected when the sample
        underestimates the error rate; the two extra passes cost ~0.5% of the key).
    eps_sec:
        Secrecy parameter of the key-length bound.
    """
    channel = channel or Channel()
    _check("sample_fraction", sample_fraction, 0.0, 1.0)
    _check("qber_abort", qber_abort, 0.0, 0.5)
    _check("eps_sec", eps_sec, 0.0, 1.0)
    if cascade_passes < 1:
        raise ConfigError("cascade_passes must be >= 1", reason="invalid_bb84_parameter")
    rng = np.random.default_rng(seed)

    det = transmit(pulses, channel, eavesdrop=eavesdrop, rng=rng)
    keep = det.alice_bases == det.bob_bases
    alice = det.alice_bits[keep]
    bob = det.bob_bits[keep]
    sifted = int(alice.size)
    qber_true = float(np.count_nonzero(alice != bob)) / sifted if sifted else 0.0

    sample_size = int(round(sifted * sample_fraction))
    in_sample = np.zeros(sifted, dtype=bool)
    in_sample[rng.choice(sifted, size=sample_size, replace=False)] = True
    errors_in_sample = int(np.count_nonzero(alice[in_sample] != bob[in_sample]))
    qber_est = errors_in_sample / sample_size if sample_size else 1.0
    alice, bob = alice[~in_sample], bob[~in_sample]

    def result(*, leaked: int = 0, flips: int = 0, key: bytes = b"", reason: str | None) -> BB84Result:
        return BB84Result(
            pulses=pulses,
            detected=det.detected,
            sifted_bits=sifted,
            sample_bits=sample_size,
            qber_estimated=qber_est,
            qber_true=qber_true,
            leaked_bits=leaked,
            corrected_errors=flips,
            final_key_bits=len(key) * 8,
            key=key,
            aborted=reason is not None,
            abort_reason=reason,
            channel=channel,
            eavesdrop=eavesdrop,
        )

    if sample_size == 0 or qber_est > qber_abort:
        return result(reason="qber_above_threshold" if sample_size else "no_secret_key")

    n = int(alice.size)
    eps_cor = 2.0**-_VERIFY_BITS
    if secret_key_length(n, sample_size, qber_est, _VERIFY_BITS, eps_sec=eps_sec, eps_cor=eps_cor) < 8:
        return result(reason="no_secret_key")  # too short even before Cascade discloses anything

    # A sample with no error says little about a small error rate: size blocks for at least 1/k.
    ec = cascade_correct(alice, bob, max(qber_est, 1.0 / sample_size), rng, passes=cascade_passes)
    verify_seed = toeplitz_seed(rng, alice.size, _VERIFY_BITS)
    leaked = ec.leaked_bits + _VERIFY_BITS
    if not np.array_equal(
        toeplitz_hash(verify_seed, alice, _VERIFY_BITS), toeplitz_hash(verify_seed, ec.corrected, _VERIFY_BITS)
    ):
        return result(leaked=leaked, flips=ec.flips, reason="ec_verification_failed")

    length = secret_key_length(n, sample_size, qber_est, leaked, eps_sec=eps_sec, eps_cor=eps_cor)
    length -= length % 8
    if length <= 0:
        return result(leaked=leaked, flips=ec.flips, reason="no_secret_key")
    final = toeplitz_hash(toeplitz_seed(rng, n, length), alice, length)
    return result(leaked=leaked, flips=ec.flips, key=np.packbits(final).tobytes(), reason=None)
