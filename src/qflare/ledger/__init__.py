"""QFLARE's audit ledger: an RFC 9162 transparency log with C2SP signed checkpoints.

Pure: no HTTP, no SQL. Storage comes through :class:`LogStore`; signing through :class:`NoteSigner`
(the enclave holds the key). Modules:

- :mod:`qflare.ledger.merkle` - RFC 9162 hashing, compact ranges, proofs and their verifiers.
- :mod:`qflare.ledger.note` - C2SP signed notes, Ed25519 and QFLARE's hybrid ML-DSA-65 line.
- :mod:`qflare.ledger.checkpoint` - C2SP tlog-checkpoint bodies.
- :mod:`qflare.ledger.cosignature` - C2SP tlog-cosignature v1 and k-of-n witness policies.
- :mod:`qflare.ledger.tiles` - C2SP tlog-tiles paths, hash tiles, entry bundles.
- :mod:`qflare.ledger.entries` - canonical leaf bytes of QFLARE events.
- :mod:`qflare.ledger.store` - the :class:`LogStore` port and :class:`MemoryLogStore`.
- :mod:`qflare.ledger.log` - :class:`TransparencyLog` and :func:`verify_log`.
- :mod:`qflare.ledger.witness` - witness logic and the tlog-witness add-checkpoint bodies.

Design and byte formats: ``docs/ledger.md``.
"""

from qflare.ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from qflare.ledger.cosignature import (
    Cosignature,
    CosignatureSigner,
    CosignatureVerifier,
    WitnessPolicy,
    WitnessQuorumError,
    WitnessReport,
)
from qflare.ledger.entries import LedgerEvent, decode_event, encode_event
from qflare.ledger.log import Problem, TransparencyLog, VerificationReport, verify_log
from qflare.ledger.merkle import (
    CompactRange,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from qflare.ledger.note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    HybridLogKey,
    HybridNoteSigner,
    Mldsa65NoteVerifier,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    UnverifiedNoteError,
    open_note,
    parse_verifier_key,
    sign_note,
)
from qflare.ledger.store import LogStore, MemoryLogStore, StoredCheckpoint
from qflare.ledger.tiles import root_from_tiles
from qflare.ledger.witness import AddCheckpointRequest, WitnessConflict, WitnessState, add_checkpoint

__all__ = [
    "AddCheckpointRequest",
    "Checkpoint",
    "CompactRange",
    "Cosignature",
    "CosignatureSigner",
    "CosignatureVerifier",
    "Ed25519NoteSigner",
    "Ed25519NoteVerifier",
    "HybridLogKey",
    "HybridNoteSigner",
    "LedgerEvent",
    "LogStore",
    "MemoryLogStore",
    "Mldsa65NoteVerifier",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "Problem",
    "StoredCheckpoint",
    "TransparencyLog",
    "UnverifiedNoteError",
    "VerificationReport",
    "WitnessConflict",
    "WitnessPolicy",
    "WitnessQuorumError",
    "WitnessReport",
    "WitnessState",
    "add_checkpoint",
    "decode_event",
    "encode_event",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "root_from_tiles",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
