"""New connections' first bytes, handled a bounded number per loop turn.

A crowd of new connections sends its request heads together: 2,000 trickled bodies opened
within a second reach the gateway in bunches of 60 to 150 heads in one poll of its sockets
(the flood client's own loop writes them in bursts). Each costs ~20 µs of parsing in that
poll and ~60 µs of its handler in the next turn, before its first wait: 130 of them were 8
to 10 ms turns, back to back, in which no request of an established connection moved.

So the first bytes of a connection are handled here: at most `per_turn` new connections in a
turn of the loop; the bytes of the others are kept, their reading paused, and they are
handled in arrival order in the turns after. Once a connection's first bytes are handled, it
reads freely. Under a crowd of new connections, those wait a few turns more; the connections
already talking (keep-alive clients, load balancers) keep their latency. What a waiting
connection holds is the one read it came with: the rest stays in the kernel until its turn.
A crowd of new connections that each send a byte delays the next new ones by the time to let
the crowd in, as it did when all of it was handled in one turn; it no longer delays the
others. A head deadline that passes while a connection's bytes wait here does not cut it
(the gateway's lag is not the client's silence). The same bound on one turn's work is
http/reaper.py's, for deadlines that expire together. nginx and Envoy handle every ready
socket in a poll, but their work per request in C is ~100 times less.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

PER_TURN = 16  # new connections handled in one turn of the loop (~1.3 ms of work)


class Arrivals:
    """Room for `per_turn` new connections in each turn of the loop, and a queue, in arrival
    order, for those over it (drained from a callback the loop queued in the turn before, so
    that the loop polls its sockets between two turns' worth)."""

    __slots__ = ("_loop", "_per_turn", "_queue", "_scheduled", "_taken")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = PER_TURN) -> None:
        self._loop = loop
        self._per_turn = per_turn
        self._queue: deque[Callable[[], None]] = deque()
        self._taken = 0  # in this turn
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._queue)

    def take(self) -> bool:
        """Room in this turn for one more (and nobody waiting before it): taken."""
        if self._taken >= self._per_turn or self._queue:
            return False
        self._taken += 1
        self._schedule()
        return True

    def wait(self, callback: Callable[[], None]) -> None:
        """Run `callback` in a later turn, after those waiting before it."""
        self._queue.append(callback)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new turn: room for `per_turn` again, the waiting ones first."""
        self._scheduled = False
        self._taken = 0
        queue = self._queue
        try:
            while queue and self._taken < self._per_turn:
                self._taken += 1
                queue.popleft()()
        finally:
            if queue or self._taken:
                # queued from a queued callback: it runs after the loop's next poll
                self._schedule()
