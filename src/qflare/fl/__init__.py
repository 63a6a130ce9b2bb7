"""Federated learning core: numpy-only aggregation, validation and transport.

This package's ``__init__`` imports no torch, so the server and the enclave can validate and
aggregate updates without it. The torch side lives in submodules imported explicitly:

- :mod:`qflare.fl.tasks` — ``get_task(name)``: data, model, metric, default training config;
- :mod:`qflare.fl.train` — ``train_local``, ``get_arrays``, ``set_arrays``;
- :mod:`qflare.fl.models` — ``DigitsCNN``, ``GRUForecaster``, ``build_model``;
- :mod:`qflare.fl.simulation` — ``run_inprocess``.
"""

from __future__ import annotations

from qflare.fl.aggregate import Accumulator, BufferedAccumulator, FedAvgAccumulator, fedavg
from qflare.fl.checks import check_update_norm, l2_norm
from qflare.fl.serialize import dump_arrays, load_arrays, sha256_hex
from qflare.fl.spec import ModelSpec, TensorSpec, check_finite
from qflare.fl.strategies import FedAvg, Strategy, get_strategy

__all__ = [
    "Accumulator",
    "BufferedAccumulator",
    "FedAvg",
    "FedAvgAccumulator",
    "ModelSpec",
    "Strategy",
    "TensorSpec",
    "check_finite",
    "check_update_norm",
    "dump_arrays",
    "fedavg",
    "get_strategy",
    "l2_norm",
    "load_arrays",
    "sha256_hex",
]
