"""The long-poll wake-up's exit-signal handler (:func:`qflare.server.wakeup.release_on_exit_signals`).

A Python signal handler runs in the main thread between two bytecodes, so it may interrupt code that holds
a lock it then asks for: a handler taking :class:`~qflare.server.wakeup.Wakeup`'s (non-reentrant) lock
while the event loop held it (in :meth:`~qflare.server.wakeup.Wakeup.wait`) hung the process for good.
"""

from __future__ import annotations

import subprocess
import sys

_HOLDS_THE_LOCK_WHEN_SIGTERM_ARRIVES = """
import os, signal, sys, time
from qflare.server.wakeup import Wakeup, release_on_exit_signals

stopped = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))  # the server's own (uvicorn's)
wakeup = Wakeup()
release_on_exit_signals(wakeup)
with wakeup._lock:  # what wait() and notify() do, briefly, on the event loop
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the handler runs here, in this thread, with the lock held
deadline = time.monotonic() + 10
while not wakeup._closed:
    assert time.monotonic() < deadline, "never closed"
    time.sleep(0.01)
print(stopped == [signal.SIGTERM], wakeup._closed, flush=True)
"""


def test_sigterm_while_the_main_thread_holds_the_wakeups_lock_neither_hangs_nor_skips_the_servers_handler() -> None:
    # Execute: SIGTERM delivered while the main thread is inside the wake-up's lock
    proc = subprocess.run([sys.executable, "-c", _HOLDS_THE_LOCK_WHEN_SIGTERM_ARRIVES], capture_output=True,
                          text=True, timeout=30)

    # Assert: the process went on (no deadlock), ran the server's handler, and closed the wake-up
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], proc.stdout
