"""One pipelined connection to Redis per gateway process, for the rate-limit script.

Commands are queued as ready-made RESP bytes; those queued in the same event-loop turn are
written together, and replies (parsed by hiredis) are matched to callers in order. Every call
has a deadline (`redis.timeout`), kept with one timer for the whole connection rather than
one per call: when the oldest unanswered call has waited a whole timeout, Redis is stalled
for all of them, so all fail and the connection is dropped (its stream is in an unknown
state); a call sent with less of its deadline left fails alone. The next call
connects again: AUTH, SELECT and SCRIPT LOAD, bounded by the same deadline.

Why not redis-py here: its connection pool, command packing and per-call bookkeeping cost
the gateway more CPU than the Redis round trip itself (docs/benchmarks.md). On a Cluster,
redis_cluster.py keeps one of these per master, redis_sentinel.py one per Sentinel.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from gateway.ratelimit.redis_endpoint import Endpoint
from gateway.ratelimit.resp import encode

# (host, port) of the Redis to talk to; called for every new connection, so a Sentinel
# failover is followed on reconnect
Locate = Callable[[], Awaitable[tuple[str, int]]]


NO_PASSWORD = "called without any password configured"  # Redis's answer to a needless AUTH


class RedisReplyError(Exception):
    """Redis answered a command with an error (NOSCRIPT, WRONGPASS, READONLY...)."""


class RedisConnectionLost(ConnectionError):
    """The connection closed or was dropped before the reply came."""


class Link(asyncio.Protocol):
    """One socket to Redis and the calls waiting on it, oldest first."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reader = hiredis.Reader()
        # unanswered calls, oldest first: (future, deadline, time sent; the loop's clock)
        self._waiting: deque[tuple[asyncio.Future[Any], float, float]] = deque()
        self._out: list[bytes] = []  # queued in this loop turn, not yet written
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None

    def send(self, packed: bytes, future: asyncio.Future[Any], deadline: float) -> None:
        """Queue one encoded command; `future` gets its reply, or fails."""
        if self.lost:
            future.set_exception(RedisConnectionLost("redis connection lost"))
            return
        loop = asyncio.get_running_loop()
        self._waiting.append((future, deadline, loop.time()))
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        timer = self._timer
        if timer is None or deadline < timer.when():  # the gateway's deadlines only grow
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _expire(self) -> None:
        """The one timer. When the oldest unanswered call has waited a whole `timeout`, Redis
        is not answering (replies come in order): every call fails and the connection goes.
        A call that is overdue sooner was sent with little of its deadline left (a retry, a
        call after a slow connect): it alone fails, and its reply is skipped when it comes."""
        self._timer = None
        waiting = self._waiting
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        silent_since = waiting[0][2] + self.timeout  # on timer expiry only, not per call
        if silent_since <= now:
            self.drop(TimeoutError(f"redis did not answer within {self.timeout * 1000:g}ms"))
            return
        wake = silent_since
        for future, deadline, _ in waiting:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(TimeoutError(
                    f"redis did not answer within {self.timeout * 1000:g}ms"))
            elif deadline < wake:
                wake = deadline
        self._timer = loop.call_at(wake, self._expire)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while (reply := reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.drop(RedisConnectionLost("unexpected reply from redis"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # a caller that gave up (request cancelled) is skipped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # already closed
        self.drop(RedisConnectionLost(f"redis closed the connection ({exc})" if exc
                                      else "redis closed the connection"))

    def drop(self, exc: Exception) -> None:
        """Fail every waiting call with `exc` and close the socket."""
        self.lost = True
        waiting, self._waiting = self._waiting, deque()
        self._out = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        for future, _, _ in waiting:
            if not future.done():
                future.set_exception(exc)


class RedisConnection:
    def __init__(self, endpoint: Endpoint, timeout: float, setup: list[bytes] | None = None,
                 locate: Locate | None = None, auth_optional: bool = False) -> None:
        """`setup`: commands sent on every new connection after AUTH/SELECT (SCRIPT LOAD);
        `locate`: where to connect (Sentinel), instead of the endpoint's host;
        `auth_optional`: a server without a password may refuse AUTH (Sentinels, which share
        the URL's one password with the master but often have none)."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.locate = locate
        self.auth_optional = auth_optional
        self._setup = list(setup or ())
        self._ssl: ssl.SSLContext | None = None  # made at the first TLS connect
        self._link: Link | None = None  # ready: handshake done
        self._connecting: asyncio.Future[Link] | None = None
        self._connecting_until = 0.0  # that attempt's deadline
        self._closed = False

    async def call(self, packed: bytes, deadline: float | None = None) -> Any:
        """Send one encoded command; its reply (a hiredis.ReplyError for an error reply).

        Raises TimeoutError past `deadline` (on the loop's clock; default `timeout` from
        now), RedisConnectionLost or OSError when Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        link = self._link
        if link is None or link.lost:
            link = await self._connect(deadline)
        future = loop.create_future()
        link.send(packed, future, deadline)
        return await future

    def reconnect(self) -> None:
        """Drop the connection (e.g. Redis is now a replica); the next call connects again."""
        if self._link is not None:
            self._link.drop(RedisConnectionLost("dropped to reconnect"))

    async def _connect(self, deadline: float) -> Link:
        if self._closed:
            raise RedisConnectionLost("connection closed")
        loop = asyncio.get_running_loop()
        attempt = self._connecting
        if attempt is None or attempt.done() or self._connecting_until <= loop.time():
            # none yet, one that ended (its callback has not run yet), or one past its
            # deadline whose own timeout has not run yet: a fresh attempt. The old one is
            # left to end by its own timeout: cancelling it would hand the callers still
            # waiting on it a CancelledError instead of a connection error.
            attempt = self._connecting = asyncio.ensure_future(self._open(deadline))
            self._connecting_until = deadline
            attempt.add_done_callback(self._connected)
        # each caller waits at most until its own deadline; the attempt keeps its own
        async with asyncio.timeout_at(deadline):
            link = await asyncio.shield(attempt)
        current = self._link  # two attempts can both succeed: the one kept serves
        return current if current is not None and not current.lost else link

    def _connected(self, attempt: asyncio.Future[Link]) -> None:
        """Runs before the attempt's callers resume (registered first), so they find the link
        kept in `_link`."""
        if self._connecting is attempt:
            self._connecting = None
        if attempt.cancelled() or attempt.exception() is not None:
            return
        link = attempt.result()
        if self._closed:  # closed while connecting: the waiting callers see a lost link
            link.drop(RedisConnectionLost("connection closed"))
        elif self._link is not None and not self._link.lost:
            link.drop(RedisConnectionLost("a second connection, not needed"))  # unused yet
        else:
            self._link = link

    async def _open(self, deadline: float) -> Link:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        link = Link(self.timeout)
        try:
            async with asyncio.timeout_at(deadline):
                if endpoint.path:
                    await loop.create_unix_connection(lambda: link, endpoint.path)
                else:
                    host, port = (await self.locate()) if self.locate else endpoint.hosts[0]
                    if endpoint.tls is not None and self._ssl is None:
                        # here, not at load: a missing CA file is a Redis failure (logged,
                        # failure_mode applies), not a gateway that cannot start
                        self._ssl = endpoint.ssl_context()
                    await loop.create_connection(lambda: link, host, port, ssl=self._ssl)
                handshake = []
                if endpoint.password is not None:
                    user = (endpoint.username,) if endpoint.username else ()
                    handshake.append(encode("AUTH", *user, endpoint.password))
                if endpoint.db:
                    handshake.append(encode("SELECT", endpoint.db))
                futures = []
                for packed in handshake + self._setup:
                    futures.append(loop.create_future())
                    link.send(packed, futures[-1], deadline)
                for reply in await asyncio.gather(*futures):
                    if isinstance(reply, hiredis.ReplyError) and not (
                            self.auth_optional and NO_PASSWORD in str(reply)):
                        raise RedisReplyError(str(reply))
        except BaseException as exc:
            link.drop(RedisConnectionLost(f"connecting failed: {exc!r}"))
            raise
        return link

    async def close(self) -> None:
        """Later calls fail; a connect in progress ends by its own deadline (cancelling it
        would hand its waiters a CancelledError instead of a connection error)."""
        self._closed = True
        if self._link is not None:
            self._link.drop(RedisConnectionLost("connection closed"))
