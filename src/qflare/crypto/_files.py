"""Atomic file writes with explicit permissions (private material is written mode 0600)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_file_atomic"]


def write_file_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    The bytes go to a temporary file in the same directory, created with ``mode`` (never wider,
    whatever the umask), flushed and fsynced, then renamed over ``path``. A reader sees either the
    old file or the complete new one, and a private file is never readable by others, even briefly.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target
