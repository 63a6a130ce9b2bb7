"""Hypothesis strategies for model states (NDArrays)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qflare.fl.spec import ModelSpec, TensorSpec

FINITE_FLOAT32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)

tensor_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=12)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def model_specs(draw: st.DrawFn, max_tensors: int = 4) -> ModelSpec:
    """A float32 spec of 1..max_tensors uniquely named tensors, in a random order."""
    names = draw(st.lists(tensor_names, min_size=1, max_size=max_tensors, unique=True))
    return ModelSpec({name: TensorSpec(tuple(draw(shapes)), "float32") for name in names})


@st.composite
def arrays_for(draw: st.DrawFn, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Finite float32 arrays matching ``spec``."""
    return {name: draw(hnp.arrays(np.float32, t.shape, elements=FINITE_FLOAT32)) for name, t in spec.items()}


weights = st.integers(min_value=1, max_value=10_000)
