"""Type aliases shared across QFLARE.

``NDArrays`` is the one currency of model state: an ordered mapping from tensor name to a numpy
array, in the model's ``state_dict`` order. Aggregation, transport and validation all take and
return it; only ``qflare.fl.train`` converts between it and a torch module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DeviceId", "NDArrays", "RoundId"]

NDArrays = dict[str, np.ndarray]
"""Ordered tensor name -> array, in ``state_dict`` order (dicts keep insertion order)."""

DeviceId = str
"""Stable identifier of an enrolled edge device."""

RoundId = int
"""Index of a federated round, starting at 0."""
