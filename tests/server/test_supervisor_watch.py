"""A ``--workers`` worker stops when its supervising process is gone (:class:`qflare.server.workers.SupervisorWatch`).

The whole server is in ``tests/server/test_workers_supervisor.py``; here the watch alone: its portable
fallback (polling the parent pid) in process, and Linux's parent-death signal in a real process tree.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qflare.server.workers import SupervisorWatch

PR_SET_CHILD_SUBREAPER = 36


def subreaper(on: bool) -> None:
    """Adopt (or stop adopting) orphaned descendants, so that a test can wait for them and see how they exited."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(ctypes.c_int(PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(int(on)), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0, os.strerror(ctypes.get_errno())


def reap(pids: list[int], exited: dict[int, int]) -> None:
    """Add to ``exited`` the exit code (``-N``: signal N) of each of ``pids`` that has exited."""
    for pid in pids:
        if pid not in exited:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                exited[pid] = os.waitstatus_to_exitcode(status)


def test_the_watch_logs_one_line_removes_the_dead_socket_stops_the_worker_then_forces_the_exit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: a fake parent pid; the dead supervisor's socket; started off the main thread (polling only)
    parent = [4242]
    events: list[str] = []
    (tmp_path / "svc").mkdir()
    sock = tmp_path / "svc" / "enclave.sock"
    sock.write_bytes(b"")
    watch = SupervisorWatch(4242, enclave_socket=str(sock), poll_seconds=0.02, grace_seconds=0.1,
                            getppid=lambda: parent[0], stop=lambda: events.append("stop"),
                            exit_now=lambda: events.append("exit"),
                            arm_backstop=lambda seconds: events.append(f"backstop {seconds:g}"))
    starter = threading.Thread(target=watch.start)
    starter.start()
    starter.join()
    time.sleep(0.3)
    assert events == [] and sock.exists()  # the supervisor is alive: nothing happens

    # Execute: the worker is reparented
    with caplog.at_level(logging.ERROR, logger="qflare.workers"):
        parent[0] = 1
        deadline = time.monotonic() + 10
        while events != ["backstop 5.1", "stop", "exit"]:
            assert time.monotonic() < deadline, events
            time.sleep(0.02)

    # Assert: the backstop armed first (grace + 5 s); one line saying why; the socket and its directory
    # removed; stopped, then forced out
    assert not watch.parent_death_signal
    lines = [r.getMessage() for r in caplog.records if r.name == "qflare.workers"]
    assert len(lines) == 1 and "the supervising process (pid 4242) is gone" in lines[0], lines
    assert not (tmp_path / "svc").exists()


_GRANDCHILD = """
import sys, time
from qflare.server.workers import SupervisorWatch
watch = SupervisorWatch(int(sys.argv[1]), poll_seconds=600).start()  # only the kernel's signal can be fast
print(watch.parent_death_signal, flush=True)
time.sleep(600)
"""

_SUPERVISOR = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_linux_signals_the_supervisors_death_and_the_worker_exits_at_once() -> None:
    # Prepare: supervisor -> worker (its watch polling every 600 s); this test adopts the orphan
    subreaper(True)
    sup = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, _GRANDCHILD], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    worker = 0
    try:
        assert sup.stdout is not None and sup.stderr is not None
        worker = int(sup.stdout.readline())
        assert sup.stdout.readline().strip() == "True"  # the kernel will signal the supervisor's death

        # Execute
        sup.kill()
        sup.wait()
        killed_at = time.monotonic()
        exited: dict[int, int] = {}
        while not exited and time.monotonic() - killed_at < 30:
            reap([worker], exited)
            time.sleep(0.02)

        # Assert: the worker stopped itself (SIGTERM, the graceful path) within seconds, saying why
        assert exited == {worker: -signal.SIGTERM}
        assert time.monotonic() - killed_at < 30
        err = sup.stderr.read()
        assert f"the supervising process (pid {sup.pid}) is gone" in err, err
    finally:
        if worker:
            try:
                os.kill(worker, signal.SIGKILL)
                os.waitpid(worker, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        subreaper(False)


_STUCK_WORKER = """
import logging, os, signal, sys, threading, time
from qflare.server.workers import SupervisorWatch
logging.basicConfig(stream=sys.stderr)
handler = logging.getLogger().handlers[0]


def write_that_never_returns():
    handler.acquire()
    time.sleep(600)


threading.Thread(target=write_that_never_returns, daemon=True).start()
time.sleep(0.2)
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a graceful stop that does not stop
SupervisorWatch(os.getppid() + 1, poll_seconds=0.05, grace_seconds=0.5, backstop_seconds=1.0).start()
time.sleep(600)
"""


def test_a_worker_whose_threads_are_stuck_still_ends_soon_after_its_supervisor_and_its_log_says_where() -> None:
    # Prepare + Execute: a worker whose log handler's lock is held for good and whose SIGTERM does nothing,
    # started with a parent that is not its supervisor (so the watch sees the supervisor gone at once)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _STUCK_WORKER], capture_output=True, text=True, timeout=60)

    # Assert: ended by the backstop (exit status 1) rather than hanging, with every thread's stack on stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Timeout (0:00:01.500000)!" in proc.stderr and "Thread 0x" in proc.stderr, proc.stderr
    assert "in acquire" in proc.stderr or "_watch" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 60
