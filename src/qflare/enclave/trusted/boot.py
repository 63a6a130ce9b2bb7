"""Enclave start-up: take the channel, harden the process, measure, check the SIGSTRUCT, serve calls.

The first frame the enclave writes is its identity (or the reason it refused to start). After that
it answers one call per frame until the host sends ``shutdown`` or closes the channel.

Start-up refuses (exit status 3) when a measured file is missing, when the SIGSTRUCT does not approve
this exact measurement, when any ``qflare`` module outside the measured list has been imported, or
when the sealed keys do not open.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
from pathlib import Path

from qflare.enclave import ecalls as ec
from qflare.enclave.channel import ChannelClosed, SharedRegion, read_frame, write_frame
from qflare.enclave.config import load_config
from qflare.enclave.measurement import default_source_root, measure, unmeasured_modules
from qflare.enclave.sigstruct import verify_sigstruct
from qflare.enclave.trusted.platform import Platform, PlatformIdentity, SgxPlatform, SimulatedPlatform
from qflare.enclave.trusted.runtime import EnclaveRuntime, RuntimeIdentity
from qflare.errors import EnclaveError, QFlareError

__all__ = ["main", "tune_malloc"]

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qflare.enclave.trusted", description="QFLARE enclave process")
    parser.add_argument("--platform", choices=["simulated", "sgx"], required=True)
    parser.add_argument("--config", type=Path, required=True, help="enclave config (measured)")
    parser.add_argument("--state-dir", type=Path, required=True, help="sealed keys and checkpoints")
    parser.add_argument("--platform-dir", type=Path, help="simulated platform files")
    parser.add_argument("--sigstruct", type=Path, help="SIGSTRUCT approving this build (simulated)")
    region = parser.add_mutually_exclusive_group(required=True)
    region.add_argument("--region-fd", type=int, help="shared region passed as a file descriptor")
    region.add_argument("--region-path", type=Path, help="shared region by path (/dev/shm under Gramine)")
    return parser.parse_args(argv)


def _take_stdio() -> tuple[int, int]:
    """Keep stdin/stdout for the channel and point fds 0/1 elsewhere, so stray prints cannot corrupt it."""
    chan_in, chan_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return chan_in, chan_out


def tune_malloc() -> bool:
    """Keep freed multi-megabyte buffers in the heap instead of returning them to the kernel.

    Every update crosses as several 4-64 MB buffers; with glibc's defaults each is a fresh ``mmap``
    whose pages fault in one by one, which costs more than the copies themselves (a 40 MB copy: 16 ms
    into fresh pages, 2 ms into reused heap). The mmap threshold cannot exceed 32 MB, so buffers above
    it (a 10M-parameter update) are taken from the heap as well (``M_MMAP_MAX`` 0). Up to 512 MB of
    freed heap is kept for reuse. Returns whether glibc accepted the settings.
    """
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
        ok &= libc.mallopt(_M_MMAP_MAX, 0)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):  # not glibc
        return False


def _harden() -> bool:
    """No core dumps; not dumpable (no ptrace or /proc/<pid>/mem by other processes of the same
    user; root keeps both). Returns whether the process is still dumpable."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
    except (OSError, AttributeError):  # not Linux glibc: nothing more we can do
        return True


def _boot(args: argparse.Namespace, *, dumpable: bool) -> EnclaveRuntime:
    config = load_config(args.config)
    root = default_source_root()
    measurement = measure(config, source_root=root)
    platform: Platform
    if args.platform == "simulated":
        if args.platform_dir is None or args.sigstruct is None:
            raise EnclaveError("a simulated enclave needs --platform-dir and --sigstruct", reason="bad_launch")
        try:
            sigstruct_blob = args.sigstruct.read_bytes()
        except OSError as exc:
            raise EnclaveError(f"cannot read SIGSTRUCT: {exc.strerror}", reason="bad_launch") from None
        sig = verify_sigstruct(sigstruct_blob, measurement=measurement.value, config=config)
        platform = SimulatedPlatform(args.platform_dir)
        quoted = PlatformIdentity(
            measurement=measurement.value,
            signer=sig.signer,
            isv_prod_id=config.isv_prod_id,
            isv_svn=config.isv_svn,
            debug=config.debug,
        )
    else:
        sgx = SgxPlatform()
        quoted = sgx.self_identity()
        if (quoted.isv_prod_id, quoted.isv_svn, quoted.debug) != (config.isv_prod_id, config.isv_svn, config.debug):
            raise EnclaveError("the manifest's SGX settings differ from the enclave config", reason="config_mismatch")
        platform = sgx
    loaded = unmeasured_modules(sys.modules, source_root=root)
    if loaded:
        raise EnclaveError(f"unmeasured code was loaded: {', '.join(loaded)}", reason="unmeasured_code")
    region = (
        SharedRegion.attach_fd(args.region_fd)
        if args.region_fd is not None
        else SharedRegion.attach_path(args.region_path)
    )
    modules = tuple(sorted(name for name in sys.modules if name == "qflare" or name.startswith("qflare.")))
    identity = RuntimeIdentity(code_measurement=measurement.value, quoted=quoted, dumpable=dumpable, modules=modules)
    return EnclaveRuntime(platform=platform, config=config, identity=identity, state_dir=args.state_dir, region=region)


def main(argv: list[str]) -> int:
    """Run the enclave process; returns its exit status."""
    chan_in, chan_out = _take_stdio()
    dumpable = _harden()
    tune_malloc()
    try:
        runtime = _boot(_parse_args(argv), dumpable=dumpable)
    except QFlareError as exc:
        write_frame(chan_out, ec.encode_error(exc))
        return 3
    except (OSError, ValueError) as exc:
        write_frame(chan_out, ec.encode_error(EnclaveError(f"start-up failed: {exc}", reason="enclave_start_failed")))
        return 3
    write_frame(chan_out, runtime.handle(ec.encode_call(ec.GetIdentity())))
    while not runtime.stopping:
        try:
            frame = read_frame(chan_in)
        except ChannelClosed:
            break
        write_frame(chan_out, runtime.handle(frame))
    return 0
