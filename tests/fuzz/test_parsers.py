"""Issue 12: every parser of untrusted bytes raises only the typed QFlareError family, never crashes.

Inputs are mutations of valid messages (so the fuzzer gets past the first length check) and raw bytes.
``make fuzz`` raises the budget with QFLARE_FUZZ_EXAMPLES."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qflare.config import load_device_config, load_global_config
from qflare.crypto import SigningKey, XWingPrivateKey
from qflare.crypto.envelope import parse_envelope, seal_request
from qflare.errors import QFlareError
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays
from qflare.ledger.entries import RoundOpened, decode_event, encode_event

EXAMPLES = int(os.environ.get("QFLARE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

_KEY = SigningKey.generate()
_ENVELOPE, _ = seal_request(_KEY, XWingPrivateKey.generate().public_key(), device_id="edge_0", method="POST",
                            path="/v1/device/task", round_id=None, payload=b"{}", now=1_000_000.0)
_ARRAYS = {"w": np.ones((3, 4), dtype=np.float32), "b": np.zeros(4, dtype=np.float32)}
_SPEC = ModelSpec.from_arrays(_ARRAYS)
_TENSORS = dump_arrays(_ARRAYS, {"num_examples": "10"})
_EVENT = encode_event(RoundOpened(round_id=1, global_model_sha256="ab" * 32, rule="fedavg", deadline_ms=5,
                                  time_ms=1))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i: i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i] = data[i: i + draw(st.integers(1, 64))]
    return bytes(data)


def _typed_only(fn, data: bytes) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(data)
    except QFlareError:
        pass


@FUZZ
@given(st.one_of(mutated(_ENVELOPE), st.binary(max_size=2048)))
def test_parse_envelope(data: bytes) -> None:
    _typed_only(lambda d: parse_envelope(d, max_size=65536), data)


@FUZZ
@given(st.one_of(mutated(_TENSORS), st.binary(max_size=2048)))
def test_load_arrays(data: bytes) -> None:
    _typed_only(load_arrays, data)
    _typed_only(lambda d: load_arrays(d, _SPEC), data)


@FUZZ
@given(st.one_of(mutated(_EVENT), st.binary(max_size=1024)))
def test_decode_event(data: bytes) -> None:
    _typed_only(decode_event, data)


_YAML_SEED = b"task: digits\nserver:\n  port: 8000\n  db_url: sqlite:///x.db\nrounds:\n  total: 3\n"


@FUZZ
@given(st.one_of(mutated(_YAML_SEED), st.binary(max_size=512)))
def test_config_loaders(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    _typed_only(lambda _: load_global_config(path), data)
    _typed_only(lambda _: load_device_config(path), data)
