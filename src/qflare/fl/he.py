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

Over HTTP (``aggregation.he: {scheme: ckks}``) a device's upload payload is a ``ckks-update`` blob
(``docs/protocol.md`` section 12.1): its header binds the round, the count and the SHA-256 of the
ciphertexts, and the envelope's composite signature covers the whole payload. The server publishes the
``ckks-aggregate`` blob as the round's model; devices decrypt it (:func:`decrypt_aggregate`).
The operator writes the two context files with :func:`write_context_files`; devices read theirs with
:func:`load_secret_context`, the server its own with :func:`load_public_context` (which refuses a
secret key).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qflare.errors import AggregationError, ConfigError
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["AGGREGATE_KIND", "UPDATE_KIND", "CheckedUpdate", "HESumAccumulator", "context_fingerprint",
           "decrypt_aggregate", "encrypt_update", "is_ckks_blob", "load_public_context", "load_secret_context",
           "make_context", "public_context", "write_context_files"]

_MAGIC = b"QFHE1"
POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
GLOBAL_SCALE = 2**40
_SLOTS = POLY_MODULUS_DEGREE // 2
UPDATE_KIND = "ckks-update"
AGGREGATE_KIND = "ckks-aggregate"
_SECRET_KIND = "ckks-secret-context"


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
    """SHA-256 of the public serialization of ``ctx``.

    A context loaded from a device's secret file carries the fingerprint the operator recorded in it: TenSEAL
    does not re-serialize a reloaded context to the same bytes, so it cannot be recomputed there."""
    recorded = getattr(ctx, "qflare_fingerprint", None)
    if isinstance(recorded, str):
        return recorded
    return hashlib.sha256(public_context(ctx)).hexdigest()


def is_ckks_blob(blob: bytes) -> bool:
    """Whether ``blob`` is a CKKS update or aggregate (by its magic; nothing is checked)."""
    return blob[: len(_MAGIC)] == _MAGIC


def write_context_files(ctx: Any, secret_path: Path, public_path: Path) -> str:
    """The operator's step: ``ctx`` with its secret key for devices (mode 0600), without for the server.

    Returns the public context's fingerprint (what both sides' blobs name)."""
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public = public_context(ctx)
    fingerprint = hashlib.sha256(public).hexdigest()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_pack({"kind": _SECRET_KIND, "context": fingerprint}, [bytes(ctx.serialize(save_secret_key=True))]))
    public_path.write_bytes(public)
    return fingerprint


def load_secret_context(path: Path) -> Any:
    """A device's context file (with the secret key); refused if it holds none or does not load."""
    ts = _ts()
    try:
        header, chunks = _unpack(path.read_bytes())
        if header.get("kind") != _SECRET_KIND or len(chunks) != 1 or not isinstance(header.get("context"), str):
            raise ValueError(f"kind {str(header.get('kind'))[:32]!r}")
        ctx = ts.context_from(chunks[0])
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the CKKS context ({exc.strerror})",
                          reason="he_context_unreadable") from None
    except AggregationError:
        raise ConfigError(f"{path}: not a device's CKKS context file (qflare he init --secret-out)",
                          reason="he_context_unreadable") from None
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise ConfigError(f"{path}: not a CKKS context ({type(exc).__name__})",
                          reason="he_context_unreadable") from None
    if not ctx.has_secret_key():
        raise ConfigError(f"{path}: this CKKS context has no secret key: a device needs the operator's secret "
                          "context (qflare he init --secret-out), not the server's public one",
                          reason="he_no_secret_key")
    ctx.qflare_fingerprint = header["context"]
    return ctx


def load_public_context(path: Path) -> bytes:
    """The server's context file; a file that holds the secret key is refused (the server must never hold it)."""
    ts = _ts()
    try:
        data = path.read_bytes()
        if is_ckks_blob(data):  # the devices' secret file (it is wrapped with its fingerprint)
            header, chunks = _unpack(data)
            if header.get("kind") == _SECRET_KIND:
                raise ConfigError(f"{path}: aggregation.he.public_context_file is the devices' secret context "
                                  "file; the server must never hold the CKKS secret key: give it the public "
                                  "context (qflare he init --public-out)", reason="he_secret_key_on_server")
        ctx = ts.context_from(data)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the CKKS context ({exc.strerror})",
                          reason="he_context_unreadable") from None
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise ConfigError(f"{path}: not a CKKS context ({type(exc).__name__})",
                          reason="he_context_unreadable") from None
    if ctx.has_secret_key():
        del ctx
        raise ConfigError(f"{path}: aggregation.he.public_context_file holds the CKKS secret key; the server must "
                          "never hold it: give the server the public context (qflare he init --public-out) and "
                          "the secret context to devices only", reason="he_secret_key_on_server")
    return data


def _ciphertext_hash(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(struct.pack(">Q", len(c)))
        h.update(c)
    return h.hexdigest()


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


def encrypt_update(ctx: Any, arrays: Mapping[str, np.ndarray], num_examples: int, spec: ModelSpec, *,
                   round_id: int | None = None, train_loss: float | None = None) -> bytes:
    """``num_examples x arrays`` (in ``spec`` order) as CKKS ciphertexts, with the context fingerprint.

    The header (kind ``ckks-update``) names the round, the count and the SHA-256 of the ciphertexts; over
    HTTP the envelope's signature covers it (docs/protocol.md 12.1)."""
    ts = _ts()
    flat = np.concatenate([np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name, _ in spec.items()])
    flat = flat * float(num_examples)
    chunks = [bytes(ts.ckks_vector(ctx, flat[i: i + _SLOTS].tolist()).serialize())
              for i in range(0, flat.size, _SLOTS)]
    header: dict[str, Any] = {"kind": UPDATE_KIND, "context": context_fingerprint(ctx), "size": int(flat.size),
                              "num_examples": int(num_examples), "spec": spec.fingerprint(),
                              "ciphertext_sha256": _ciphertext_hash(chunks)}
    if round_id is not None:
        header["round_id"] = int(round_id)
    if train_loss is not None:
        header["train_loss"] = float(train_loss)
    return _pack(header, chunks)


@dataclass(frozen=True)
class CheckedUpdate:
    """A CKKS update that passed :meth:`HESumAccumulator.check` (its ciphertexts loaded, not yet added)."""

    num_examples: int
    train_loss: float | None
    ciphertext_sha256: str
    vectors: list[Any] = field(repr=False)


class HESumAccumulator:
    """Sums CKKS updates under the public context; never decrypts (it cannot: no secret key).

    Parameters
    ----------
    public_context_bytes:
        :func:`public_context` of the operator's context.
    spec:
        The model's tensors (only their total size and fingerprint are checked: values are hidden).
    """

    def __init__(self, public_context_bytes: bytes, spec: ModelSpec, *, context: Any = None) -> None:
        ts = _ts()
        # ``context``: the same public context already loaded (the server loads it once, not every round).
        self._ctx = context if context is not None else ts.context_from(public_context_bytes)
        if self._ctx.has_secret_key():
            raise ConfigError("the server's CKKS context must not hold the secret key",
                              reason="he_secret_key_on_server")
        self._fingerprint = hashlib.sha256(public_context_bytes).hexdigest()
        self.spec = spec
        self._size = sum(int(np.prod(t.shape)) for _, t in spec.items())
        self._sum: list[Any] | None = None
        self.count = 0
        self.total_examples = 0

    def check(self, blob: bytes, *, num_examples: int | None = None, round_id: int | None = None) -> CheckedUpdate:
        """Check the blob's kind, context, model, count, round and ciphertext hash; load its ciphertexts.

        Changes nothing (:meth:`add_checked` adds). ``num_examples``: the count claimed elsewhere, which
        must equal the header's; ``round_id``: the round the blob must name (over HTTP, the signed round)."""
        ts = _ts()
        header, chunks = _unpack(blob)
        if header.get("kind", UPDATE_KIND) != UPDATE_KIND:
            raise AggregationError(f"not a CKKS update (kind {str(header.get('kind'))[:32]!r})", reason="he_malformed")
        if header.get("context") != self._fingerprint:
            raise AggregationError("CKKS update made under another context or other parameters "
                                   f"(fingerprint {str(header.get('context'))[:16]}..., expected "
                                   f"{self._fingerprint[:16]}...)", reason="he_context_mismatch")
        if header.get("size") != self._size or header.get("spec") != self.spec.fingerprint():
            raise AggregationError("CKKS update for another model", reason="he_spec_mismatch")
        count = header.get("num_examples")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 10_000_000:
            raise AggregationError(f"CKKS update's num_examples out of range: {str(count)[:32]}",
                                   reason="he_count_mismatch")
        if num_examples is not None and count != int(num_examples):
            raise AggregationError("CKKS update's count differs from its claim", reason="he_count_mismatch")
        if round_id is not None and header.get("round_id") != round_id:
            raise AggregationError(f"CKKS update made for round {str(header.get('round_id'))[:16]}, not {round_id}",
                                   reason="he_round_mismatch")
        loss = header.get("train_loss")
        if loss is not None and (not isinstance(loss, int | float) or isinstance(loss, bool)
                                 or not np.isfinite(loss)):
            raise AggregationError("CKKS update's train_loss is not a finite number", reason="he_malformed")
        if len(chunks) != -(-self._size // _SLOTS):
            raise AggregationError("CKKS update has the wrong number of ciphertexts", reason="he_malformed")
        digest = _ciphertext_hash(chunks)
        if "ciphertext_sha256" in header and header["ciphertext_sha256"] != digest:
            raise AggregationError("CKKS update's ciphertexts do not match their SHA-256", reason="he_hash_mismatch")
        try:
            vectors = [ts.ckks_vector_from(self._ctx, c) for c in chunks]
        except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError on bad bytes
            raise AggregationError(f"CKKS ciphertext does not load ({type(exc).__name__})",
                                   reason="he_malformed") from None
        last = self._size - _SLOTS * (len(chunks) - 1)
        if any(v.size() != _SLOTS for v in vectors[:-1]) or vectors[-1].size() != last:
            # A ciphertext of the right context whose vector is shorter or longer would shift the sum.
            raise AggregationError("CKKS ciphertext of another length", reason="he_spec_mismatch")
        return CheckedUpdate(num_examples=count, train_loss=None if loss is None else float(loss),
                             ciphertext_sha256=digest, vectors=vectors)

    def add_checked(self, update: CheckedUpdate) -> None:
        """Add an update :meth:`check` passed."""
        vectors = update.vectors
        self._sum = vectors if self._sum is None else [a + b for a, b in zip(self._sum, vectors, strict=True)]
        self.count += 1
        self.total_examples += update.num_examples

    def add(self, blob: bytes, num_examples: int) -> None:
        """Check the blob's context, size and claimed count, then add its ciphertexts."""
        self.add_checked(self.check(blob, num_examples=num_examples))

    def result(self, *, round_id: int | None = None) -> bytes:
        """The encrypted sum and the total count (kind ``ckks-aggregate``), for devices to decrypt."""
        if self._sum is None or self.total_examples == 0:
            raise AggregationError("no updates to aggregate", reason="no_updates")
        header: dict[str, Any] = {"kind": AGGREGATE_KIND, "context": self._fingerprint, "size": self._size,
                                  "num_examples": self.total_examples, "count": self.count,
                                  "spec": self.spec.fingerprint()}
        if round_id is not None:
            header["round_id"] = int(round_id)
        return _pack(header, [bytes(v.serialize()) for v in self._sum])


def decrypt_aggregate(ctx: Any, blob: bytes, spec: ModelSpec) -> NDArrays:
    """A device's view of the round: decrypt the summed blob and divide by the total count (FedAvg)."""
    ts = _ts()
    header, chunks = _unpack(blob)
    if header.get("context") != context_fingerprint(ctx):
        raise AggregationError("CKKS aggregate made under another context", reason="he_context_mismatch")
    if header.get("spec") != spec.fingerprint() or header.get("size") != sum(int(np.prod(t.shape))
                                                                              for _, t in spec.items()):
        raise AggregationError("CKKS aggregate for another model", reason="he_spec_mismatch")
    if not isinstance(header.get("num_examples"), int) or header["num_examples"] <= 0:
        raise AggregationError("CKKS aggregate without a positive count", reason="he_malformed")
    flat = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt()) for c in chunks])
    flat = flat[: int(header["size"])] / float(header["num_examples"])
    out: NDArrays = {}
    pos = 0
    for name, tensor in spec.items():
        n = int(np.prod(tensor.shape))
        out[name] = flat[pos: pos + n].reshape(tensor.shape).astype(tensor.dtype)
        pos += n
    return out
