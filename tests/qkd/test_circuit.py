"""The Qiskit circuit backend: agreement with the vectorised simulator, IBM submission path, bad input."""

from __future__ import annotations

import builtins
import math
import sys
from typing import Any

import numpy as np
import pytest

from qflare.errors import ConfigError, QKDError
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel, Detections, transmit

CHANNEL = Channel(distance_km=0.0, detector_efficiency=0.5, dark_count_prob=1e-3, misalignment=0.05)


def _rates(det: Detections) -> tuple[float, float, int]:
    keep = det.alice_bases == det.bob_bases
    sifted = int(keep.sum())
    return sifted / det.pulses, float(np.mean(det.alice_bits[keep] != det.bob_bits[keep])), sifted


def test_aer_circuits_agree_with_the_vectorised_simulator() -> None:
    # Prepare
    pytest.importorskip("qiskit_aer", reason="circuit backend needs the extra: pip install qflare[qiskit]")
    from qflare.qkd.circuit import transmit_circuits

    pulses = 12_000
    # Execute
    circ = transmit_circuits(pulses, CHANNEL, rng=np.random.default_rng(1), pulses_per_circuit=200)
    vect = transmit(2_000_000, CHANNEL, rng=np.random.default_rng(2))
    # Assert: differences within 4 standard deviations of the circuit sample (the small one)
    sift_c, qber_c, n_c = _rates(circ)
    sift_v, qber_v, _ = _rates(vect)
    assert abs(sift_c - sift_v) < 4 * math.sqrt(sift_v * (1 - sift_v) / pulses)
    assert abs(qber_c - qber_v) < 4 * math.sqrt(qber_v * (1 - qber_v) / n_c)
    assert 0.04 < qber_c < 0.07


def test_bb84_runs_end_to_end_on_aer() -> None:
    pytest.importorskip("qiskit_aer", reason="circuit backend needs the extra: pip install qflare[qiskit]")
    result = run_bb84(30_000, Channel(distance_km=0.0, detector_efficiency=0.5), seed=3, backend="aer")
    assert result.backend == "aer" and not result.aborted and result.final_key_bits > 0


def test_ibm_submission_path_on_a_fake_backend() -> None:
    # Prepare: a fake 5-qubit device from Qiskit's own test utilities (local, noisy, no network)
    pytest.importorskip("qiskit_ibm_runtime", reason="needs the extra: pip install qflare[qiskit]")
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    from qflare.qkd.circuit import transmit_circuits

    # Execute
    det = transmit_circuits(300, CHANNEL, rng=np.random.default_rng(4), backend="ibm", ibm_backend=FakeManilaV2())
    # Assert: about half the pulses click; sifted bits mostly agree despite the device's noise
    sift, qber, _ = _rates(det)
    assert det.pulses == 300 and 0.15 < sift < 0.35
    assert qber < 0.2


class _RefusingService:
    def __init__(self, token: str) -> None:
        raise RuntimeError("401 Client Error: Unauthorized: invalid token")


def test_refused_ibm_token_is_a_clear_error_and_never_falls_back() -> None:
    pytest.importorskip("qiskit_ibm_runtime", reason="needs the extra: pip install qflare[qiskit]")
    from qflare.qkd.circuit import transmit_circuits

    with pytest.raises(QKDError) as info:
        transmit_circuits(
            100, CHANNEL, rng=np.random.default_rng(5), backend="ibm", ibm_token="bad", service_factory=_RefusingService
        )
    assert info.value.reason == "ibm_token_refused"
    assert "no key was produced" in info.value.message and "no fallback" in info.value.message


def test_refused_ibm_token_in_bb84_produces_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("qiskit_ibm_runtime", reason="needs the extra: pip install qflare[qiskit]")
    import qflare.qkd.circuit as circuit

    monkeypatch.setattr(circuit, "_ibm_service", _RefusingService)
    with pytest.raises(QKDError) as info:
        run_bb84(1000, CHANNEL, backend="ibm", ibm_token="bad", seed=1)
    assert info.value.reason == "ibm_token_refused"


def test_ibm_without_a_token_is_refused() -> None:
    pytest.importorskip("qiskit_ibm_runtime", reason="needs the extra: pip install qflare[qiskit]")
    with pytest.raises(ConfigError) as info:
        run_bb84(1000, CHANNEL, backend="ibm", seed=1)
    assert info.value.reason == "ibm_token_missing"


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: make `import qiskit` fail as on a lean install
    real_import = builtins.__import__

    def no_qiskit(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("qiskit", "qiskit_aer"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.split(".")[0] in ("qiskit", "qiskit_aer")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_qiskit)
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        run_bb84(1000, CHANNEL, backend="aer", seed=1)
    assert "pip install qflare[qiskit]" in info.value.message and info.value.reason == "qiskit_missing"


def test_circuit_backend_refuses_weak_pulses_and_unknown_backends() -> None:
    from qflare.qkd.source import Source

    with pytest.raises(ConfigError):
        run_bb84(1000, source=Source.decoy_state(), backend="aer")
    with pytest.raises(ConfigError):
        run_bb84(1000, backend="quantum-cloud")
