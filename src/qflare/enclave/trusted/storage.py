"""Files the enclave writes to untrusted storage (sealed state, simulated platform secrets)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["MAX_STATE_FILE", "create_exclusive", "read_file", "remove_file", "write_atomic"]

MAX_STATE_FILE = 1 << 34
"""The largest sealed state file the enclave reads back (checkpoints, optimizer state, the device registry)."""


def write_atomic(path: Path, *parts: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``parts`` (written back to back) in one rename.

    Readers see the old or the new file, never a mix.

    No fsync: a checkpoint is only an optimisation over replaying sealed updates, which the server
    stores durably.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def create_exclusive(path: Path, data: bytes, *, mode: int) -> bool:
    """Create ``path`` with ``data`` unless it exists; ``True`` if this call created it.

    Written to a temporary name and hard-linked into place, so a concurrent reader never sees a
    partial file and of two concurrent creators exactly one wins.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def read_file(path: Path, *, max_size: int) -> bytes | None:
    """The file's bytes, or ``None`` if it does not exist; larger than ``max_size`` raises ``OSError``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_size + 1)
    except FileNotFoundError:
        return None
    if len(data) > max_size:
        raise OSError(f"{path} is larger than {max_size} bytes")
    return data


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
