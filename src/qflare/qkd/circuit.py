"""BB84's quantum phase as Qiskit circuits: on qiskit-aer with a channel noise model, or on IBM Quantum.

Optional: needs ``pip install qflare[qiskit]`` (qiskit, qiskit-aer, qiskit-ibm-runtime), imported
only when a circuit backend is asked for. Each pulse is prepared and measured on qubits of one
circuit (``pulses_per_circuit`` pulses per circuit, one shot each), with Alice's bit, her basis and
Bob's basis drawn by the caller's seeded generator:

Aer (``backend="aer"``): two qubits per pulse, *photon* (prepared ``|1>``: a photon is there) and
*polarisation* (``X^bit``, ``H^basis`` by Alice; ``H^basis`` by Bob; measured). The channel is a
noise model built from the same :class:`~qflare.qkd.channel.Channel` parameters:

- loss: a two-qubit Pauli channel after preparation: with probability ``eta`` nothing, else the photon
  qubit flips to ``|0>`` (no photon) and the polarisation is randomised (``Y`` with probability 1/2,
  which randomises both bases' outcomes);
- dark counts: a readout error on the photon qubit, ``P(read 1 | 0) = 1 - (1 - p_dark)^2``;
- misalignment: a readout error on the polarisation qubit, ``P(flip) = e_mis``.

Bob detects a pulse when its photon qubit reads 1; his bit is the polarisation outcome. Everything is
Clifford + Pauli noise, so the ``stabilizer`` method simulates hundreds of qubits per circuit. Not
modelled, against the vectorised simulator: the random bit of a double click when a dark count
coincides with a photon (a ``p_dark / 2`` share of the errors, 5e-7 at the default channel).

IBM Quantum (``backend="ibm"``): real hardware cannot apply a fibre's loss as a gate noise, so there
one polarisation qubit per pulse is prepared and measured on the device (through
``qiskit_ibm_runtime.SamplerV2``, after transpiling to the device's instruction set) and the channel
(loss, dark counts, misalignment) is applied to the outcomes classically, as the vectorised simulator
does; the device adds its own gate and readout errors on top. The token is never stored; a refused
token or an unreachable service is a :class:`~qflare.errors.QKDError` and no key; nothing falls back
to a simulator. This path cannot be tested here (no network, no account); the submission path is
tested with a fake backend from ``qiskit_ibm_runtime.fake_provider``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError, QKDError
from qflare.qkd.channel import Channel, Detections

__all__ = [
    "aer_noise_model",
    "build_circuits",
    "expected_rates",
    "require_qiskit",
    "run_on_backend",
    "transmit_circuits",
]

Bits = NDArray[np.uint8]
_EXTRA = "pip install qflare[qiskit]"


def require_qiskit() -> None:
    """Raise a :class:`ConfigError` naming the extra when qiskit or qiskit-aer is missing."""
    try:
        import qiskit  # noqa: F401
        import qiskit_aer  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the circuit backend needs Qiskit, which is not installed ({exc.name} missing): {_EXTRA}",
            reason="qiskit_missing",
        ) from None


def _dark(channel: Channel) -> float:
    return 1.0 - (1.0 - channel.dark_count_prob) ** 2


def aer_noise_model(channel: Channel, width: int) -> Any:
    """The channel's readout errors on a ``width``-qubit circuit of (photon, polarisation) pairs.

    Dark counts on every photon qubit (even index), misalignment on every polarisation qubit (odd).
    """
    require_qiskit()
    from qiskit_aer.noise import NoiseModel, ReadoutError

    model = NoiseModel()
    dark = _dark(channel)
    e = channel.misalignment
    for q in range(0, width, 2):
        model.add_readout_error(ReadoutError([[1.0 - dark, dark], [0.0, 1.0]]), [q])
        model.add_readout_error(ReadoutError([[1.0 - e, e], [e, 1.0 - e]]), [q + 1])
    return model


def _loss_error(channel: Channel) -> Any:
    from qiskit_aer.noise import pauli_error

    eta = channel.transmittance
    # Pauli labels are little-endian: "YX" = Y on the polarisation (qubit 1), X on the photon (qubit 0).
    return pauli_error([("II", eta), ("IX", (1.0 - eta) / 2.0), ("YX", (1.0 - eta) / 2.0)])


def build_circuits(
    alice_bits: Bits, alice_bases: Bits, bob_bases: Bits, *, per_circuit: int, photon_qubits: bool, loss: Any = None
) -> list[Any]:
    """Circuits of ``per_circuit`` pulses: per pulse ``[photon,] polarisation`` qubits, all measured."""
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister

    width = 2 if photon_qubits else 1
    circuits = []
    for start in range(0, alice_bits.size, per_circuit):
        stop = min(start + per_circuit, alice_bits.size)
        q = QuantumRegister(width * (stop - start), "q")
        c = ClassicalRegister(width * (stop - start), "c")
        qc = QuantumCircuit(q, c)
        for j, i in enumerate(range(start, stop)):
            pol = width * j + width - 1
            if photon_qubits:
                qc.x(width * j)
                if loss is not None:
                    qc.append(loss.to_instruction(), [width * j, pol])
            if alice_bits[i]:
                qc.x(pol)
            if alice_bases[i]:
                qc.h(pol)
            if bob_bases[i]:
                qc.h(pol)
        qc.measure(q, c)
        circuits.append(qc)
    return circuits


def _bits_of(counts: dict[str, int], width: int) -> NDArray[np.uint8]:
    (bitstring,) = counts  # one shot per circuit
    little = bitstring.replace(" ", "")[::-1]  # Qiskit prints qubit 0 last
    return np.array([int(b) for b in little[:width]], dtype=np.uint8)


def _coins(rng: np.random.Generator, pulses: int) -> tuple[Bits, Bits, Bits]:
    c = rng.integers(0, 8, size=pulses, dtype=np.uint8)
    one = np.uint8(1)
    return c & one, (c >> one) & one, (c >> np.uint8(2)) & one


def _transmit_aer(pulses: int, channel: Channel, rng: np.random.Generator, per_circuit: int) -> Detections:
    from qiskit_aer import AerSimulator

    a_bits, a_bases, b_bases = _coins(rng, pulses)
    circuits = build_circuits(a_bits, a_bases, b_bases, per_circuit=per_circuit, photon_qubits=True,
                              loss=_loss_error(channel))  # fmt: skip
    model = aer_noise_model(channel, max(qc.num_qubits for qc in circuits))
    sim = AerSimulator(method="stabilizer", noise_model=model, seed_simulator=int(rng.integers(2**31)))
    results = sim.run(circuits, shots=1).result()
    photon = np.empty(pulses, dtype=bool)
    outcome = np.empty(pulses, dtype=np.uint8)
    done = 0
    for qc in circuits:
        bits = _bits_of(results.get_counts(qc), qc.num_qubits)
        k = qc.num_qubits // 2
        photon[done : done + k] = bits[0::2] == 1
        outcome[done : done + k] = bits[1::2]
        done += k
    return Detections(pulses, a_bits[photon], a_bases[photon], outcome[photon], b_bases[photon])


def run_on_backend(backend: Any, circuits: list[Any]) -> list[Any]:
    """Transpile ``circuits`` for ``backend`` and run them with ``SamplerV2`` (one shot each)."""
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
    from qiskit_ibm_runtime import SamplerV2

    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(circuits)
    job = SamplerV2(mode=backend).run(isa, shots=1)
    return list(job.result())


def _ibm_service(token: str) -> Any:
    from qiskit_ibm_runtime import QiskitRuntimeService

    return QiskitRuntimeService(channel="ibm_quantum_platform", token=token)


def _transmit_hardware(
    pulses: int, channel: Channel, rng: np.random.Generator, backend: Any, per_circuit: int
) -> Detections:
    """Prepare and measure on ``backend`` (IBM device or fake), then apply the fibre classically."""
    a_bits, a_bases, b_bases = _coins(rng, pulses)
    per_circuit = max(1, min(per_circuit, int(backend.num_qubits)))
    circuits = build_circuits(a_bits, a_bases, b_bases, per_circuit=per_circuit, photon_qubits=False)
    outcome = np.empty(pulses, dtype=np.uint8)
    done = 0
    for pub in run_on_backend(backend, circuits):
        bits = np.asarray(pub.data.c.to_bool_array(order="little")[0], dtype=np.uint8)
        outcome[done : done + bits.size] = bits
        done += bits.size
    flip = rng.random(pulses) < channel.misalignment
    outcome = np.where(flip & (a_bases == b_bases), outcome ^ 1, outcome).astype(np.uint8)
    photon = rng.random(pulses) < channel.transmittance
    dark = rng.random(pulses) < _dark(channel)
    coin = rng.integers(0, 2, size=pulses, dtype=np.uint8)
    outcome = np.where(photon, outcome, coin).astype(np.uint8)
    click = photon | dark
    return Detections(pulses, a_bits[click], a_bases[click], outcome[click], b_bases[click])


def transmit_circuits(
    pulses: int,
    channel: Channel,
    *,
    eavesdrop: float = 0.0,
    rng: np.random.Generator,
    backend: str = "aer",
    ibm_token: str | None = None,
    ibm_backend: Any = None,
    service_factory: Callable[[str], Any] | None = None,
    pulses_per_circuit: int = 128,
) -> Detections:
    """The quantum phase of BB84 (single photons) as circuits; same output as :func:`channel.transmit`.

    Parameters
    ----------
    backend:
        ``aer`` (local simulator with the channel noise model) or ``ibm`` (IBM Quantum).
    ibm_token:
        API token for ``ibm`` (refused tokens raise ``QKDError(reason="ibm_token_refused")``).
    ibm_backend:
        A backend object to use instead of asking the service (e.g. a fake backend in tests).
    service_factory:
        Builds the runtime service from the token (``QiskitRuntimeService`` by default; tests replace it).
    pulses_per_circuit:
        Pulses (qubit groups) per circuit.

    Raises
    ------
    ConfigError
        Qiskit missing (the message names ``pip install qflare[qiskit]``), ``ibm`` without a token,
        intercept-resend requested (not modelled in circuits).
    QKDError
        The IBM service refused the token or could not be reached, or the job failed.
    """
    if eavesdrop:
        raise ConfigError("intercept-resend is not modelled on the circuit backends", reason="invalid_bb84_parameter")
    if pulses < 0 or pulses_per_circuit < 1:
        raise ConfigError("pulses must be >= 0 and pulses_per_circuit >= 1", reason="invalid_pulses")
    require_qiskit()
    if pulses == 0:
        empty = np.empty(0, dtype=np.uint8)
        return Detections(0, empty, empty, empty, empty)
    if backend == "aer":
        return _transmit_aer(pulses, channel, rng, pulses_per_circuit)
    if backend != "ibm":
        raise ConfigError(f"unknown circuit backend {backend!r}", reason="invalid_bb84_parameter")
    try:
        import qiskit_ibm_runtime  # noqa: F401
    except ImportError:
        raise ConfigError(f"the IBM backend needs qiskit-ibm-runtime: {_EXTRA}", reason="qiskit_missing") from None
    device = ibm_backend
    if device is None:
        if not ibm_token:
            raise ConfigError(
                "the IBM backend needs an IBM Quantum token (QFLARE_IBM_TOKEN)", reason="ibm_token_missing"
            )
        try:
            service = (service_factory or _ibm_service)(ibm_token)
            device = service.least_busy(operational=True, simulator=False, min_num_qubits=2)
        except Exception as exc:  # the runtime raises several unrelated types for a refused token
            text = str(exc).lower()
            refused = any(w in text for w in ("401", "403", "unauthor", "token", "forbidden", "invalid"))
            raise QKDError(
                f"IBM Quantum {'refused the token' if refused else 'could not be reached'}: "
                f"{type(exc).__name__}: {str(exc)[:200]}; no key was produced (no fallback to simulation)",
                reason="ibm_token_refused" if refused else "ibm_unreachable",
            ) from None
    try:
        return _transmit_hardware(pulses, channel, rng, device, pulses_per_circuit)
    except (ConfigError, QKDError):
        raise
    except Exception as exc:
        raise QKDError(
            f"IBM Quantum job failed: {type(exc).__name__}: {str(exc)[:200]}", reason="ibm_job_failed"
        ) from None


def expected_rates(channel: Channel) -> tuple[float, float]:
    """``(sifted bits per pulse, QBER)`` of the circuit model (for checks)."""
    eta, dark = channel.transmittance, _dark(channel)
    p_click = eta + (1.0 - eta) * dark
    errors = eta * channel.misalignment + (1.0 - eta) * dark * 0.5
    return p_click / 2.0, errors / p_click if p_click else 0.0
