"""BB84 end to end: quantum phase, sifting, error estimation, Cascade, privacy amplification.

:func:`run_bb84` is deterministic for a given ``seed``. Its :class:`BB84Result` reports every stage;
``key`` holds the final secret key (Alice's copy, which Bob's equals after verified correction).

Sources (``source=``): ``single-photon`` (the default), ``weak-coherent`` (Poisson pulses, GLLP key
length: every multi-photon pulse insecure) and ``decoy`` (signal, weak decoy and vacuum intensities,
vacuum + weak decoy estimates of the single-photon yield and error rate, finite-size bound of
:func:`qflare.qkd.decoy.decoy_finite_key`). With weak pulses only signal pulses give key; decoy and
vacuum detections are all disclosed for the estimates. ``pns=True`` puts the photon-number-splitting
eavesdropper of :mod:`qflare.qkd.wcp` on the link; the result reports what she learned
(``eve_known_bits`` of the corrected key before privacy amplification, and ``eve_key_info_bits``,
the bits of the final key her knowledge can determine: ``l - (n - known - leaked)`` when positive).

Protocol, in order
    1. :func:`qflare.qkd.channel.transmit` (or :func:`qflare.qkd.wcp.transmit_pulses`, or the Qiskit
       circuits of :mod:`qflare.qkd.circuit`): ``pulses`` pulses, Bob's detections.
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
from numpy.typing import NDArray

from qflare.errors import ConfigError, QKDError
from qflare.qkd.cascade import cascade_correct
from qflare.qkd.channel import Channel, transmit
from qflare.qkd.decoy import FiniteEstimate, decoy_finite_key, gllp_finite_key
from qflare.qkd.keyrate import finite_size_deviation, secret_key_length
from qflare.qkd.source import Source, SourceKind
from qflare.qkd.toeplitz import toeplitz_hash, toeplitz_seed
from qflare.qkd.wcp import transmit_pulses

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
        ``"qber_above_threshold"``, ``"ec_verification_failed"``, ``"no_secret_key"``,
        ``"decoy_bound_undefined"`` (the measured gains give ``Y_1^L <= 0``) or ``None``.
    channel:
        The channel model used.
    eavesdrop:
        Fraction of pulses Eve intercepted.
    source:
        The transmitter (``Source()`` is the single-photon source).
    pns:
        Whether the photon-number-splitting eavesdropper was on the link.
    backend:
        ``vectorised``, ``aer`` or ``ibm`` (who ran the quantum phase).
    estimates:
        Weak pulses: gains per intensity, ``y1_lower``, ``e1_upper``, single-photon bits, ...
    multi_photon_key_bits:
        Corrected-key bits that came from multi-photon pulses (simulator only).
    eve_known_bits:
        Corrected-key bits Eve knows exactly (PNS; simulator only).
    eve_key_info_bits:
        Bits of the final key Eve's knowledge can determine (0 means privacy amplification
        removed all of it; simulator only).
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
    source: Source = field(default_factory=Source)
    pns: bool = False
    backend: str = "vectorised"
    estimates: dict[str, float] = field(default_factory=dict)
    multi_photon_key_bits: int = 0
    eve_known_bits: int = 0
    eve_key_info_bits: int = 0

    @property
    def key_rate(self) -> float:
        """Secret bits per pulse sent."""
        return self.final_key_bits / self.pulses if self.pulses else 0.0

    def require_key(self) -> bytes:
        """The key, or :class:`QKDError` (``reason="qber_abort"`` or ``"no_secret_key"``) if aborted."""
        if not self.aborted:
            return self.key
        reason = "qber_abort" if self.abort_reason == "qber_above_threshold" else "no_secret_key"
        if self.abort_reason == "decoy_bound_undefined":
            reason = "decoy_abort"
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
            "source": self.source.kind.value,
            "signal_mu": self.source.signal if self.source.kind is not SourceKind.SINGLE_PHOTON else None,
            "decoy_nu": self.source.decoy if self.source.kind is SourceKind.DECOY else None,
            "pns": self.pns,
            "backend": self.backend,
            "estimates": dict(self.estimates),
            "multi_photon_key_bits": self.multi_photon_key_bits,
            "eve_known_bits": self.eve_known_bits,
            "eve_key_info_bits": self.eve_key_info_bits,
        }


def _check(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low < value < high):
        raise ConfigError(f"{name} must lie in ({low}, {high}), got {value}", reason="invalid_bb84_parameter")


_Lengths = dict[str, float]


def run_bb84(
    pulses: int,
    channel: Channel | None = None,
    *,
    source: Source | None = None,
    pns: bool = False,
    eavesdrop: float = 0.0,
    seed: int | None = None,
    sample_fraction: float = 0.1,
    qber_abort: float = 0.11,
    cascade_passes: int = 6,
    eps_sec: float = 1e-10,
    backend: str = "vectorised",
    ibm_token: str | None = None,
    unsafe_assume_single_photons: bool = False,
) -> BB84Result:
    """Simulate one BB84 session and distil a secret key.

    Parameters
    ----------
    pulses:
        Pulses to send.
    channel:
        Link model; ``Channel()`` (10 km) when omitted.
    source:
        Transmitter; the ideal single-photon source when omitted.
    pns:
        Put the photon-number-splitting eavesdropper on the link (weak-coherent or decoy source).
    eavesdrop:
        Fraction of pulses an intercept-resend eavesdropper attacks.
    seed:
        Seed for every random choice (quantum and public); fresh OS entropy when ``None``.
    sample_fraction:
        Share of the sifted (signal) bits disclosed to estimate the error rate.
    qber_abort:
        Abort when the estimated error rate exceeds this (11% by default, just below the
        ``1 - 2 h(e) = 0`` point of Shor-Preskill).
    cascade_passes:
        Cascade passes (6: the original 4 left ~2 in 1000 small keys uncorrected when the sample
        underestimates the error rate; the two extra passes cost ~0.5% of the key).
    eps_sec:
        Secrecy parameter of the key-length bound.
    backend:
        ``vectorised`` (NumPy), ``aer`` (Qiskit circuits on qiskit-aer) or ``ibm`` (IBM Quantum
        through qiskit-ibm-runtime, needs ``ibm_token``); the circuit backends need ``pip install
        qflare[qiskit]`` and a single-photon source.
    ibm_token:
        IBM Quantum API token for ``backend="ibm"``.
    unsafe_assume_single_photons:
        Treat weak pulses as single photons when computing the key length (no GLLP, no decoys).
        Insecure: it exists to show what a PNS attack gains; never use it for real keys.
    """
    channel = channel or Channel()
    source = source or Source()
    _check("sample_fraction", sample_fraction, 0.0, 1.0)
    _check("qber_abort", qber_abort, 0.0, 0.5)
    _check("eps_sec", eps_sec, 0.0, 1.0)
    if cascade_passes < 1:
        raise ConfigError("cascade_passes must be >= 1", reason="invalid_bb84_parameter")
    if backend not in ("vectorised", "aer", "ibm"):
        raise ConfigError(f"backend must be vectorised, aer or ibm, got {backend!r}", reason="invalid_bb84_parameter")
    single = source.kind is SourceKind.SINGLE_PHOTON
    if pns and single:
        raise ConfigError("the PNS attack needs a weak-coherent or decoy source", reason="invalid_bb84_parameter")
    if backend != "vectorised" and not single:
        raise ConfigError(f"the {backend} circuit backend runs the single-photon source only", reason="invalid_source")
    rng = np.random.default_rng(seed)

    # 1-2. Quantum phase and sifting. Key candidates are the sifted signal pulses.
    multi = knows = np.zeros(0, dtype=bool)
    stats: dict[str, int] = {}
    if single:
        if backend == "vectorised":
            det = transmit(pulses, channel, eavesdrop=eavesdrop, rng=rng)
        else:
            from qflare.qkd.circuit import transmit_circuits

            det = transmit_circuits(pulses, channel, eavesdrop=eavesdrop, rng=rng, backend=backend, ibm_token=ibm_token)
        detected = det.detected
        keep = det.alice_bases == det.bob_bases
        alice, bob = det.alice_bits[keep], det.bob_bits[keep]
        multi = knows = np.zeros(alice.size, dtype=bool)
    else:
        wcp = transmit_pulses(pulses, channel, source, pns=pns, eavesdrop=eavesdrop, rng=rng)
        detected = wcp.detected
        keep = wcp.alice_bases == wcp.bob_bases
        cls = wcp.intensity[keep]
        a_all, b_all = wcp.alice_bits[keep], wcp.bob_bits[keep]
        sig = cls == 0
        alice, bob = a_all[sig], b_all[sig]
        multi, knows = wcp.multi_photon[keep][sig], wcp.eve_knows[keep][sig]
        for index, (name, _, _) in enumerate(source.classes):
            mask = cls == index
            stats[f"pulses_{name}"] = wcp.pulses_by_class[index]
            stats[f"sifted_{name}"] = int(np.count_nonzero(mask))
            stats[f"errors_{name}"] = int(np.count_nonzero(a_all[mask] != b_all[mask]))
    sifted = int(alice.size)
    qber_true = float(np.count_nonzero(alice != bob)) / sifted if sifted else 0.0

    # 3. Estimation on a random sample of the key candidates.
    sample_size = int(round(sifted * sample_fraction))
    in_sample = np.zeros(sifted, dtype=bool)
    in_sample[rng.choice(sifted, size=sample_size, replace=False)] = True
    errors_in_sample = int(np.count_nonzero(alice[in_sample] != bob[in_sample]))
    qber_est = errors_in_sample / sample_size if sample_size else 1.0
    alice, bob = alice[~in_sample], bob[~in_sample]
    multi, knows = multi[~in_sample], knows[~in_sample]
    n = int(alice.size)
    eps_cor = 2.0**-_VERIFY_BITS
    estimates: _Lengths = {}

    def key_length(leaked: int) -> float:
        """The secure length for ``leaked`` disclosed bits (the source's bound); fills ``estimates``."""
        if single or unsafe_assume_single_photons:
            return float(secret_key_length(n, sample_size, qber_est, leaked, eps_sec=eps_sec, eps_cor=eps_cor))
        est: FiniteEstimate
        if source.kind is SourceKind.DECOY:
            est = decoy_finite_key(
                mu=source.signal,
                nu=source.decoy,
                pulses=(stats["pulses_signal"], stats["pulses_decoy"], stats["pulses_vacuum"]),
                sifted=(stats["sifted_signal"], stats["sifted_decoy"], stats["sifted_vacuum"]),
                errors_decoy=stats["errors_decoy"],
                errors_vacuum=stats["errors_vacuum"],
                key_bits=n,
                leaked_bits=leaked,
                eps_sec=eps_sec,
                eps_cor=eps_cor,
            )
        else:
            est = gllp_finite_key(
                mu=source.signal,
                pulses=stats["pulses_signal"],
                sifted=stats["sifted_signal"],
                key_bits=n,
                bit_error_upper=qber_est + finite_size_deviation(n, sample_size, eps_sec),
                leaked_bits=leaked,
                eps_sec=eps_sec,
                eps_cor=eps_cor,
            )
        estimates.clear()
        estimates.update(est.figures)
        return est.length if est.defined else -math.inf

    def result(*, leaked: int = 0, flips: int = 0, key: bytes = b"", reason: str | None) -> BB84Result:
        known = int(np.count_nonzero(knows)) if key or reason is None else 0
        info = max(0, len(key) * 8 - max(0, n - known - leaked)) if key else 0
        return BB84Result(
            pulses=pulses,
            detected=detected,
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
            source=source,
            pns=pns,
            backend=backend,
            estimates=dict(estimates) | {k: float(v) for k, v in stats.items()},
            multi_photon_key_bits=int(np.count_nonzero(multi)),
            eve_known_bits=int(np.count_nonzero(knows)),
            eve_key_info_bits=info,
        )

    if sample_size == 0 or qber_est > qber_abort:
        return result(reason="qber_above_threshold" if sample_size else "no_secret_key")

    first = key_length(_VERIFY_BITS)
    if first == -math.inf and not single and not unsafe_assume_single_photons:
        undefined = source.kind is SourceKind.DECOY
        return result(reason="decoy_bound_undefined" if undefined else "no_secret_key")
    if first < 8:
        return result(reason="no_secret_key")  # too short even before Cascade discloses anything

    return _distil(alice, bob, rng, qber_est, sample_size, cascade_passes, key_length, result)


def _distil(
    alice: NDArray[np.uint8],
    bob: NDArray[np.uint8],
    rng: np.random.Generator,
    qber_est: float,
    sample_size: int,
    cascade_passes: int,
    key_length: Any,
    result: Any,
) -> BB84Result:
    """Steps 4-6: Cascade, the verification hash, privacy amplification to ``key_length(leaked)`` bits."""
    n = int(alice.size)
    # A sample with no error says little about a small error rate: size blocks for at least 1/k.
    ec = cascade_correct(alice, bob, max(qber_est, 1.0 / sample_size), rng, passes=cascade_passes)
    verify_seed = toeplitz_seed(rng, alice.size, _VERIFY_BITS)
    leaked = ec.leaked_bits + _VERIFY_BITS
    if not np.array_equal(
        toeplitz_hash(verify_seed, alice, _VERIFY_BITS), toeplitz_hash(verify_seed, ec.corrected, _VERIFY_BITS)
    ):
        return result(leaked=leaked, flips=ec.flips, reason="ec_verification_failed")  # type: ignore[no-any-return]

    bound = key_length(leaked)
    length = math.floor(bound) if math.isfinite(bound) else 0
    length -= length % 8
    if length <= 0:
        return result(leaked=leaked, flips=ec.flips, reason="no_secret_key")  # type: ignore[no-any-return]
    final = toeplitz_hash(toeplitz_seed(rng, n, length), alice, length)
    return result(leaked=leaked, flips=ec.flips, key=np.packbits(final).tobytes(), reason=None)  # type: ignore[no-any-return]
