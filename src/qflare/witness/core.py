"""The witness: its key, its persisted state, and the add-checkpoint step."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from qflare.crypto.secret_access import TOKEN
from qflare.errors import ConfigError
from qflare.ledger import CosignatureSigner, CosignatureVerifier, HybridLogKey
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.note import parse_note
from qflare.ledger.witness import (
    WitnessState,
    add_checkpoint,
    format_add_checkpoint_response,
    parse_add_checkpoint_request,
)

__all__ = ["Witness", "generate_witness_key", "load_witness_key"]

_KEY_VERSION = "qflare-witness-key/v1"


def generate_witness_key(path: Path, name: str) -> CosignatureVerifier:
    """Write a new witness key (Ed25519 seed, file mode 0600) to ``path``; return its verifier."""
    seed = secrets.token_bytes(32)
    signer = CosignatureSigner(name, seed, TOKEN)  # validates the name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": _KEY_VERSION, "name": name, "seed": seed.hex()}, f)
    return signer.verifier()


def load_witness_key(path: Path) -> CosignatureSigner:
    """Read a witness key written by :func:`generate_witness_key`."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != _KEY_VERSION:
            raise ValueError("not a qflare witness key")
        return CosignatureSigner(str(doc["name"]), bytes.fromhex(doc["seed"]), TOKEN)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"witness key {path}: {exc}", reason="witness_key") from None


class Witness:
    """Cosigns checkpoints of one log that are consistent with the last one it cosigned.

    The state (the last cosigned checkpoint note) lives in ``state_file`` and is replaced atomically
    (write a temporary file, rename) only after a successful check; concurrent requests are serialised
    so two cannot both advance from the same state.

    Parameters
    ----------
    origin:
        The log's origin line.
    log_key:
        The log's pinned hybrid key (both signature lines must verify).
    signer:
        The witness's cosignature key.
    state_file:
        Where the state persists (``None``: memory only, for tests).
    clock:
        UNIX seconds, for the cosignature timestamp.
    """

    def __init__(self, *, origin: str, log_key: HybridLogKey, signer: CosignatureSigner,
                 state_file: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.origin = origin
        self.log_key = log_key
        self.signer = signer
        self.state_file = state_file
        self.clock = clock
        self._lock = threading.Lock()
        self._state = self._load()

    @property
    def verifier(self) -> CosignatureVerifier:
        return self.signer.verifier()

    @property
    def size(self) -> int:
        """The size of the last cosigned checkpoint (0 before the first)."""
        return 0 if self._state is None else self._state.size

    @property
    def state(self) -> WitnessState | None:
        return self._state

    def _load(self) -> WitnessState | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            doc = json.loads(self.state_file.read_text())
            if doc.get("origin") != self.origin:
                raise ValueError(f"state is for origin {doc.get('origin')!r}")
            note = str(doc["checkpoint"]).encode("utf-8")
            self.log_key.open(note)  # our own file, re-verified all the same
            cp = parse_checkpoint(parse_note(note)[0], origin=self.origin)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"witness state {self.state_file}: {exc}", reason="witness_state") from None
        return WitnessState(cp, note)

    def _save(self, state: WitnessState) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"origin": self.origin, "size": state.size,
                                   "checkpoint": state.note.decode("utf-8")}))
        os.replace(tmp, self.state_file)  # atomic swap: the old state or the new one

    def add_checkpoint(self, body: bytes) -> bytes:
        """The tlog-witness ``add-checkpoint`` step: parse, check, persist, return the cosignature lines.

        Raises what :func:`qflare.ledger.witness.add_checkpoint` raises (the service maps it to HTTP).
        """
        request = parse_add_checkpoint_request(body)
        with self._lock:
            line, new = add_checkpoint(self._state, request, origin=self.origin, log_key=self.log_key,
                                       cosigner=self.signer, timestamp=int(self.clock()))
            self._save(new)  # before answering: a cosigned checkpoint is never forgotten
            self._state = new
        return format_add_checkpoint_response([line])
