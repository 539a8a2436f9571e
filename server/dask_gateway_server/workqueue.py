"""A queue of keys to reconcile: each key is queued once, and never handled twice at once."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()
        self._queued_at: dict[K, float] = {}
        self.closed = False
        #: Called with the seconds each key waited, for metrics.
        self.on_wait: Callable[[float], None] | None = None

    def qsize(self) -> int:
        return len(self._queue)

    def put(self, key: K) -> None:
        """Ask for ``key`` to be handled (again, if it is being handled now)."""
        if self.closed:
            return
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queued_at[key] = time.monotonic()
            self._queue.append(key)
            self._wakeup.set()

    def put_after(self, key: K, delay: float) -> None:
        """Handle ``key`` after ``delay`` seconds (an earlier timer for it is replaced)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.put(key)

    async def get(self) -> K:
        while not self._queue:
            if self.closed:
                raise asyncio.CancelledError
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        queued_at = self._queued_at.pop(key, None)
        if self.on_wait is not None and queued_at is not None:
            self.on_wait(time.monotonic() - queued_at)
        self._running.add(key)
        return key

    def task_done(self, key: K) -> None:
        self._running.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.put(key)

    def close(self) -> None:
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._wakeup.set()
