"""C2SP tlog-checkpoint bodies: strict formatting and parsing.

A checkpoint is the text of a signed note::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros>\\n
    <base64 of the 32-byte root hash>\\n
    [<extension line>\\n ...]

The origin is a non-empty line identifying the log; extension lines are optional and non-empty.
Parsing is strict: every rule above is enforced, the size fits in a uint64, the root decodes to
exactly 32 bytes, and the encoding round-trips byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from qflare.errors import LedgerIntegrityError
from qflare.ledger.merkle import HASH_SIZE
from qflare.ledger.note import Note, NoteVerifier, open_note

__all__ = ["MAX_TREE_SIZE", "Checkpoint", "open_checkpoint", "parse_checkpoint"]

MAX_TREE_SIZE: Final = 2**64 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _malformed(message: str) -> LedgerIntegrityError:
    return LedgerIntegrityError(message, reason="malformed_checkpoint")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog-checkpoint body.

    Parameters
    ----------
    origin:
        The log's origin line (non-empty, no newline).
    size:
        The tree size (0 .. 2**64 - 1).
    root:
        The 32-byte RFC 9162 root hash of the first ``size`` entries.
    extensions:
        Optional extension lines, each non-empty and without a newline.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise _malformed("origin must be one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise _malformed("tree size out of range")
        if len(self.root) != HASH_SIZE:
            raise _malformed("root must be 32 bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise _malformed("extension lines must be non-empty single lines")

    def to_body(self) -> bytes:
        """The checkpoint text (the note body), ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return ("\n".join(lines) + "\n").encode()


def parse_checkpoint(body: bytes | str, *, origin: str | None = None) -> Checkpoint:
    """Strictly parse a checkpoint body; with ``origin``, require that origin.

    Raises
    ------
    LedgerIntegrityError
        ``malformed_checkpoint`` for any deviation from the format; ``origin_mismatch`` if the
        origin is not the expected one.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("checkpoint is not UTF-8") from None
    if not text.endswith("\n"):
        raise _malformed("checkpoint must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise _malformed("checkpoint needs origin, size and root lines")
    origin_line, size_line, root_line, *extensions = lines
    if not origin_line:
        raise _malformed("empty origin")
    if not _DECIMAL.fullmatch(size_line) or int(size_line) > MAX_TREE_SIZE:
        raise _malformed("tree size is not a canonical uint64 decimal")
    try:
        root = base64.b64decode(root_line.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _malformed("root is not base64") from None
    if len(root) != HASH_SIZE:
        raise _malformed(f"root must be {HASH_SIZE} bytes, got {len(root)}")
    cp = Checkpoint(origin_line, int(size_line), root, tuple(extensions))
    if cp.to_body() != raw:  # non-canonical base64 (trailing bits) and the like
        raise _malformed("checkpoint is not in canonical form")
    if origin is not None and cp.origin != origin:
        raise LedgerIntegrityError(f"checkpoint origin is {cp.origin!r}, expected {origin!r}", reason="origin_mismatch")
    return cp


def open_checkpoint(msg: bytes, origin: str, verifiers: Iterable[NoteVerifier]) -> tuple[Checkpoint, Note]:
    """Open a signed checkpoint note: verify signatures (:func:`open_note`) and parse the body.

    Raises
    ------
    LedgerIntegrityError
        Any reason from :func:`open_note` or :func:`parse_checkpoint`.
    """
    note = open_note(msg, verifiers)
    return parse_checkpoint(note.text, origin=origin), note
