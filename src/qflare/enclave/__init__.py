"""Enclave-isolated aggregation: a simulated enclave in its own process, or the same code under
Gramine-SGX. See ``docs/enclave.md``.

The server side::

    from qflare.enclave import EnclaveAggregator, EnclaveConfig
    backend = EnclaveAggregator.launch(".qflare/enclave", config=EnclaveConfig(max_update_norm=10.0))
    ...  # an AggregationBackend; plus quote(), open_request(), seal_response(), sign_task(),
    backend.close()  # model_signature()

The edge side (pure functions, no process)::

    from qflare.enclave import AttestationPolicy, verify_model_signature, verify_task_signature

This package's ``__init__`` imports nothing eagerly: the enclave process loads only the modules it
measures (:data:`qflare.enclave.measurement.ENCLAVE_MODULES`), and this file is one of them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ENCLAVE_MODULES",
    "AttestationPolicy",
    "Enclave",
    "EnclaveAggregator",
    "EnclaveConfig",
    "EnclaveIdentity",
    "EnclavePublicKeys",
    "EnclaveUpdateHandle",
    "GramineLauncher",
    "Measurement",
    "OpenedRequest",
    "RoundTask",
    "SimulatedLauncher",
    "VerifiedQuote",
    "measure",
    "read_trust_root",
    "sign_enclave",
    "signer_id",
    "verify_model_signature",
    "verify_quote",
    "verify_task_signature",
]

_WHERE = {
    "ENCLAVE_MODULES": "qflare.enclave.measurement",
    "Measurement": "qflare.enclave.measurement",
    "measure": "qflare.enclave.measurement",
    "signer_id": "qflare.enclave.measurement",
    "EnclaveConfig": "qflare.enclave.config",
    "EnclavePublicKeys": "qflare.enclave.quote",
    "sign_enclave": "qflare.enclave.sigstruct",
    "RoundTask": "qflare.enclave.statements",
    "verify_model_signature": "qflare.enclave.statements",
    "verify_task_signature": "qflare.enclave.statements",
    "AttestationPolicy": "qflare.enclave.verify",
    "VerifiedQuote": "qflare.enclave.verify",
    "verify_quote": "qflare.enclave.verify",
    "Enclave": "qflare.enclave.client",
    "EnclaveIdentity": "qflare.enclave.client",
    "OpenedRequest": "qflare.enclave.client",
    "GramineLauncher": "qflare.enclave.launcher",
    "SimulatedLauncher": "qflare.enclave.launcher",
    "read_trust_root": "qflare.enclave.launcher",
    "EnclaveAggregator": "qflare.enclave.backend",
    "EnclaveUpdateHandle": "qflare.enclave.backend",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'qflare.enclave' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
