"""Bounded use of upstream connections, so that no kind of request can starve the others.

An ordinary request holds a pooled connection for as long as its exchange lasts; a WebSocket
holds a connection of its own for as long as both ends keep it open; a request whose body is
still arriving when it is forwarded holds a pooled connection at the client's pace. Without
bounds, a few clients holding WebSockets or trickling bodies one byte at a time take every
connection, and ordinary requests wait forever. So:

- pooled connections are `upstream.max_connections` slots; a request waits at most
  `upstream.pool_timeout` for one, then the gateway answers 503 (Envoy and nginx answer an
  overflowing pool the same way);
- WebSockets and streaming bodies have budgets of their own (`max_websockets`,
  `max_streaming_bodies`), and per client IP (`..._per_client`), refused at once when full;
- bodies up to `upstream.request_buffer` are received whole before a pooled slot is taken,
  so a slow client of an ordinary request holds nothing upstream (nginx's request buffering);
  while it receives one, the request is not counted against
  `server.limits.max_requests_in_progress` either (handler.py `_receive`).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Full(Exception):
    """No capacity for this request; `detail` says which bound (safe to show)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Slots:
    """`limit` slots taken and given back; optionally at most `per_client` per client.

    `take` waits in arrival order, bounded by a timeout; `take_now` does not wait.
    """

    __slots__ = ("_by_client", "_waiters", "in_use", "limit", "per_client", "what")

    def __init__(self, what: str, limit: int, per_client: int | None = None) -> None:
        self.what = what
        self.limit = limit
        self.per_client = per_client
        self.in_use = 0
        self._by_client: dict[str, int] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self, client: str) -> None:
        """Take a slot for `client` or raise Full."""
        if self.in_use >= self.limit:
            raise Full(f"too many {self.what} at once (limit {self.limit})")
        held = self._by_client.get(client, 0)
        if self.per_client is not None and held >= self.per_client:
            raise Full(f"this client holds too many {self.what} "
                       f"(limit {self.per_client} per client)")
        self.in_use += 1
        self._by_client[client] = held + 1

    def give_back_for(self, client: str) -> None:
        held = self._by_client.get(client, 0)
        if held <= 1:
            self._by_client.pop(client, None)
        else:
            self._by_client[client] = held - 1
        self.give_back()

    async def take(self, timeout: float) -> None:
        """Take a slot, waiting at most `timeout` seconds for one; raise Full after that."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a slot just as the wait ended: pass it on
            else:
                waiter.cancel()
                # (a cancelled waiter left in the queue is skipped by give_back)
            if isinstance(exc, TimeoutError):
                raise Full(f"no free upstream connection within {timeout:g}s "
                           f"({self.limit} in use)") from None
            raise

    def give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: in_use unchanged
                return
        self.in_use -= 1
