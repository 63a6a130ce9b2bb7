"""The boundary's transport: length-prefixed control frames over a pipe, bulk data in shared memory.

Control frames carry only small JSON headers (at most :data:`MAX_FRAME` bytes). Bulk data (envelopes,
updates, sealed blobs, models) is written once into a shared memory region that both processes map:
the host writes inputs into the lower half, the enclave writes outputs into the upper half, and a
:class:`~qflare.enclave.ecalls.Region` in the frame says where. The enclave copies an input out of the
region once before looking at it, so the host cannot change bytes after they were checked (no double
fetch); that copy is the only one the boundary adds.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import time
from pathlib import Path
from typing import Final, Literal

from qflare.enclave.ecalls import Region
from qflare.errors import EnclaveError, PayloadTooLarge

__all__ = [
    "MAX_FRAME",
    "ChannelClosed",
    "ChannelTimeout",
    "SharedRegion",
    "read_frame",
    "write_frame",
]

MAX_FRAME: Final = 4 * 1024 * 1024
_LEN: Final = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other end closed the channel (the process exited)."""


class ChannelTimeout(Exception):
    """No complete frame arrived in time."""


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame; raises :class:`ChannelClosed` when the reader is gone."""
    if len(payload) > MAX_FRAME:
        raise ValueError("control frame too large: bulk data belongs in the shared region")
    view = memoryview(_LEN.pack(len(payload)) + payload)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except (BrokenPipeError, ConnectionResetError, OSError) as exc:
        raise ChannelClosed(str(exc)) from None


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelTimeout("no answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise ChannelTimeout("no answer in time")
        try:
            chunk = os.read(fd, min(remaining, 1 << 20))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None
        if not chunk:
            raise ChannelClosed("end of stream")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, timeout: float | None = None) -> bytes:
    """Read one frame (waiting at most ``timeout`` seconds in total when given)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (length,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if length > MAX_FRAME:
        raise ChannelClosed("oversized control frame")
    return _read_exact(fd, length, deadline)


class SharedRegion:
    """A memory region mapped by the host and the enclave: inputs below the middle, outputs above.

    Parameters
    ----------
    mm:
        The shared mapping (``MAP_SHARED``).
    """

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm
        self.capacity = len(mm)
        self.half = self.capacity // 2

    # -- creating and attaching -----------------------------------------------------------------

    @classmethod
    def create_memfd(cls, capacity: int) -> tuple[SharedRegion, int]:
        """A new anonymous region (Linux ``memfd``) and its descriptor, to pass to the enclave process.

        Pages are allocated on first touch, so a large capacity costs only address space.
        """
        fd = os.memfd_create("qflare-enclave-region", os.MFD_CLOEXEC)
        os.ftruncate(fd, capacity)
        return cls(mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)), fd

    @classmethod
    def create_file(cls, path: Path, capacity: int) -> SharedRegion:
        """A new region backed by a file (``/dev/shm/...`` for Gramine's ``untrusted_shm`` mount)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, capacity)
            return cls(mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        finally:
            os.close(fd)

    @classmethod
    def attach_fd(cls, fd: int) -> SharedRegion:
        """Map a region passed as a file descriptor."""
        size = os.fstat(fd).st_size
        try:
            return cls(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        finally:
            os.close(fd)

    @classmethod
    def attach_path(cls, path: Path) -> SharedRegion:
        """Map a region by path."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return cls.attach_fd(fd)

    # -- moving bytes ---------------------------------------------------------------------------

    def put(self, *parts: bytes, side: Literal["input", "output"]) -> Region:
        """Copy ``parts`` back to back into one half; returns where they went."""
        n = sum(len(p) for p in parts)
        if n > self.half:
            raise PayloadTooLarge(
                f"{n} bytes do not fit the {self.half}-byte half of the shared region", reason="region_too_small"
            )
        start = pos = 0 if side == "input" else self.half
        for part in parts:
            self._mm[pos : pos + len(part)] = part
            pos += len(part)
        return Region(offset=start, length=n)

    def take(self, region: Region, *, side: Literal["input", "output"]) -> bytes:
        """Copy a region out of one half (bounds-checked: the other side chose the numbers)."""
        low, high = (0, self.half) if side == "input" else (self.half, 2 * self.half)
        end = region.offset + region.length
        if not (low <= region.offset <= end <= high):
            raise EnclaveError("region outside its half of the shared memory", reason="ecall_refused")
        return self._mm[region.offset : end]

    def close(self) -> None:
        """Unmap."""
        self._mm.close()
