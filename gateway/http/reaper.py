"""Expired client deadlines, handled a bounded slice per loop turn.

Hostile clients come in crowds: 2,000 connections opened within a few milliseconds of each
other (a flood, or a load balancer replaying a backlog) fall silent together, and their
deadlines (`timeouts.header`, `timeouts.body`) expire together. A timer callback per
connection that cuts it on the spot runs every one of them in the same loop turn, before
the loop polls its sockets again, so the requests of everyone else wait behind the whole
burst. The reaper queues what expired and handles it in slices of at most `budget` seconds
of work, one slice per loop turn: each slice runs from a callback the loop queued in the
turn before, so the loop polls its sockets (and serves the other connections) between
slices. A cut comes a little later under a burst; nobody else's request waits for all of
them at once.

The callbacks recheck their own condition when they run: a client that sent its bytes
while it was queued is not cut.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

BUDGET = 0.0005  # seconds of expirations handled per loop turn (at least one a turn)


class Reaper:
    """Runs queued expiry callbacks, a slice of at most `budget` seconds per loop turn."""

    __slots__ = ("_budget", "_clock", "_loop", "_queue", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float = BUDGET,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._loop = loop
        self._budget = budget
        self._clock = clock
        self._queue: deque[Callable[[], None]] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, callback: Callable[[], None]) -> None:
        """Queue `callback`; it runs in a later loop turn, after at least one poll."""
        self._queue.append(callback)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._slice)

    def _slice(self) -> None:
        queue = self._queue
        deadline = self._clock() + self._budget
        try:
            while queue:
                queue.popleft()()
                if self._clock() >= deadline:
                    break
        finally:
            # queued from a queued callback: the next slice runs after the loop's next poll
            if queue:
                self._loop.call_soon(self._slice)
            else:
                self._scheduled = False
