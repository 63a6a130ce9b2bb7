"""Homomorphic aggregation with CKKS (TenSEAL, extra ``he``): the server sums ciphertexts it cannot read.

The operator makes a CKKS context (:func:`make_context`) and provisions it *with* its secret key to the
devices; the server gets :func:`public_context` (no secret key). A device sends
``num_examples x update`` encrypted (:func:`encrypt_update`); :class:`HESumAccumulator` adds the
ciphertexts and the plaintext example counts; a device decrypts the sum and divides
(:func:`decrypt_aggregate`): that is FedAvg, and what devices train on next.

Every blob names the fingerprint of the public context it was made under (SHA-256 of the public
serialization: parameters, public and relinearisation keys); the server refuses another
(``AggregationError`` reason ``he_context_mismatch``). Only sums exist under CKKS: median, Krum,
clipping and norm checks cannot run on ciphertexts (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["HESumAccumulator", "context_fingerprint", "decrypt_aggregate", "encrypt_update", "make_context",
           "public_context"]

_MAGIC = b"QFHE1"
POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
GLOBAL_SCALE = 2**40
_SLOTS = POLY_MODULUS_DEGREE // 2


def _ts() -> Any:
    try:
        import tenseal
    except ImportError:  # pragma: no cover - the extra is installed by make test
        raise ConfigError("CKKS needs the 'he' extra: pip install 'qflare[he]'", reason="missing_extra") from None
    return tenseal


def make_context() -> Any:
    """A fresh CKKS context with its secret key (the operator's, for devices only)."""
    ts = _ts()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_MODULUS_DEGREE,
                     coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    ctx.global_scale = GLOBAL_SCALE
    return ctx


def public_context(ctx: Any) -> bytes:
    """``ctx`` serialized without its secret key: what the server is given."""
    return bytes(ctx.serialize(save_secret_key=False))


def context_fingerprint(ctx: Any) -> str:
    """SHA-256 of the public serialization of ``ctx``."""
    return hashlib.sha256(public_context(ctx)).hexdigest()


def _pack(header: Mapping[str, Any], chunks: list[bytes]) -> bytes:
    head = json.dumps(dict(header), sort_keys=True).encode()
    parts = [_MAGIC, struct.pack(">I", len(head)), head]
    for c in chunks:
        parts += [struct.pack(">Q", len(c)), c]
    return b"".join(parts)


def _unpack(blob: bytes) -> tuple[dict[str, Any], list[bytes]]:
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("bad magic")
        pos = len(_MAGIC)
        (n,) = struct.unpack_from(">I", blob, pos)
        header = json.loads(blob[pos + 4: pos + 4 + n])
        pos += 4 + n
        chunks = []
        while pos < len(blob):
            (m,) = struct.unpack_from(">Q", blob, pos)
            chunks.append(blob[pos + 8: pos + 8 + m])
            pos += 8 + m
        if not isinstance(header, dict):
            raise ValueError("bad header")
        return header, chunks
    except (ValueError, struct.error) as exc:
        raise AggregationError(f"not a CKKS update ({exc})", reason="he_malformed") from None


def encrypt_update(ctx: Any, arrays: Mapping[str, np.ndarray], num_examples: int, spec: ModelSpec) -> bytes:
    """``num_examples x arrays`` (in ``spec`` order) as CKKS ciphertexts, with the context fingerprint."""
    ts = _ts()
    flat = np.concatenate([np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name, _ in spec.items()])
    flat = flat * float(num_examples)
    chunks = [bytes(ts.ckks_vector(ctx, flat[i: i + _SLOTS].tolist()).serialize())
              for i in range(0, flat.size, _SLOTS)]
    header = {"context": context_fingerprint(ctx), "size": int(flat.size), "num_examples": int(num_examples),
              "spec": spec.fingerprint()}
    return _pack(header, chunks)


class HESumAccumulator:
    """Sums CKKS updates under the public context; never decrypts (it cannot: no secret key).

    Parameters
    ----------
    public_context_bytes:
        :func:`public_context` of the operator's context.
    spec:
        The model's tensors (only their total size and fingerprint are checked: values are hidden).
    """

    def __init__(self, public_context_bytes: bytes, spec: ModelSpec) -> None:
        ts = _ts()
        self._ctx = ts.context_from(public_context_bytes)
        if self._ctx.has_secret_key():
            raise ConfigError("the server's CKKS context must not hold the secret key",
                              reason="he_secret_key_on_server")
        self._fingerprint = hashlib.sha256(public_context_bytes).hexdigest()
        self.spec = spec
        self._size = sum(int(np.prod(t.shape)) for _, t in spec.items())
        self._sum: list[Any] | None = None
        self.count = 0
        self.total_examples = 0

    def add(self, blob: bytes, num_examples: int) -> None:
        """Check the blob's context, size and claimed count, then add its ciphertexts."""
        ts = _ts()
        header, chunks = _unpack(blob)
        if header.get("context") != self._fingerprint:
            raise AggregationError("CKKS update made under another context or other parameters "
                                   f"(fingerprint {str(header.get('context'))[:16]}..., expected "
                                   f"{self._fingerprint[:16]}...)", reason="he_context_mismatch")
        if header.get("size") != self._size or header.get("spec") != self.spec.fingerprint():
            raise AggregationError("CKKS update for another model", reason="he_spec_mismatch")
        if header.get("num_examples") != int(num_examples) or int(num_examples) < 0:
            raise AggregationError("CKKS update's count differs from its claim", reason="he_count_mismatch")
        if len(chunks) != -(-self._size // _SLOTS):
            raise AggregationError("CKKS update has the wrong number of ciphertexts", reason="he_malformed")
        try:
            vectors = [ts.ckks_vector_from(self._ctx, c) for c in chunks]
        except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError on bad bytes
            raise AggregationError(f"CKKS ciphertext does not load ({type(exc).__name__})",
                                   reason="he_malformed") from None
        self._sum = vectors if self._sum is None else [a + b for a, b in zip(self._sum, vectors, strict=True)]
        self.count += 1
        self.total_examples += int(num_examples)

    def result(self) -> bytes:
        """The encrypted sum and the total count, for devices to decrypt."""
        if self._sum is None or self.total_examples == 0:
            raise AggregationError("no updates to aggregate", reason="no_updates")
        header = {"context": self._fingerprint, "size": self._size, "num_examples": self.total_examples,
                  "spec": self.spec.fingerprint()}
        return _pack(header, [bytes(v.serialize()) for v in self._sum])


def decrypt_aggregate(ctx: Any, blob: bytes, spec: ModelSpec) -> NDArrays:
    """A device's view of the round: decrypt the summed blob and divide by the total count (FedAvg)."""
    ts = _ts()
    header, chunks = _unpack(blob)
    if header.get("context") != context_fingerprint(ctx):
        raise AggregationError("CKKS aggregate made under another context", reason="he_context_mismatch")
    flat = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt()) for c in chunks])
    flat = flat[: int(header["size"])] / float(header["num_examples"])
    out: NDArrays = {}
    pos = 0
    for name, tensor in spec.items():
        n = int(np.prod(tensor.shape))
        out[name] = flat[pos: pos + n].reshape(tensor.shape).astype(tensor.dtype)
        pos += n
    return out
