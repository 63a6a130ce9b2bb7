"""A "the rounds changed" signal that the task route's long-poll awaits (``docs/protocol.md`` 11.2).

The orchestrator runs in worker threads; the routes run on the event loop. :class:`Wakeup` counts
changes (a generation number) and wakes every coroutine waiting for a generation to pass, from any
thread, without holding a thread per waiting device: a waiting request costs one future.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["Wakeup", "release_on_exit_signals"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wakeup:
    """Thread-safe change counter with awaitable waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def close(self) -> None:
        """The server is stopping: wake every waiter, and let no new wait block (they return ``False``)."""
        with self._lock:
            self._closed = True
        self.notify()

    @property
    def generation(self) -> int:
        """Read this before looking at the state; :meth:`wait` then returns at once if it moved since."""
        return self._generation

    def notify(self) -> None:
        """Something changed: wake every waiter (callable from any thread)."""
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, set()
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until the generation passes ``generation`` or ``timeout`` seconds pass; ``True`` if it changed.

        ``False`` at once after :meth:`close`: a stopping server answers held requests instead of holding them.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if self._closed:
                return False
            if self._generation != generation:
                return True
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)


def release_on_exit_signals(wakeup: Wakeup) -> None:
    """Close ``wakeup`` when SIGINT or SIGTERM arrives, then run the handler that was there (uvicorn's).

    Uvicorn waits for requests in flight before it stops; held long-polls would delay a Ctrl-C by up to
    their ``wait``. Called from the app's start-up, in the main thread (elsewhere, e.g. under a test
    client's thread, it does nothing).

    The handler runs in the main thread between two bytecodes, perhaps while that thread holds the
    wake-up's lock (on the event loop, in :meth:`Wakeup.wait`): it hands the close to a short-lived thread,
    which takes the lock once the interrupted code has let go, and never takes it itself.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # not under a server that handles it

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            threading.Thread(target=wakeup.close, name="wakeup-close", daemon=True).start()
            previous(signum, frame)

        signal.signal(sig, handler)
