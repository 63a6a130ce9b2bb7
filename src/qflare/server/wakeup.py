"""A "the rounds changed" signal that the task route's long-poll awaits (``docs/protocol.md`` 11.2).

The orchestrator runs in worker threads; the routes run on the event loop. :class:`Wakeup` counts
changes (a generation number) and wakes every coroutine waiting for a generation to pass, from any
thread, without holding a thread per waiting device: a waiting request costs one future.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Wakeup"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wakeup:
    """Thread-safe change counter with awaitable waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

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
        """Wait until the generation passes ``generation`` or ``timeout`` seconds pass; ``True`` if it changed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
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
