"""One pipelined connection to Redis: a gateway process keeps one (one per master on a Cluster)
for the calls of its request path, the rate-limit script.

Commands are queued as ready-made RESP bytes; those queued in the same event-loop turn are
written together, and replies (parsed by hiredis) are matched to callers in order. Every call
has a deadline (`redis.timeout`), counted from when its bytes were written and kept with one
timer for the whole connection rather than one per call: when the oldest unanswered call has
waited a whole timeout, Redis is stalled for all of them, so all fail and the connection is
dropped (its stream is in an unknown state); a call sent with less of its deadline left fails
alone. The next call connects again: AUTH, SELECT and SCRIPT LOAD, bounded by the same
deadline.

The timer firing is not yet a timeout: uvloop runs due timers before it polls the sockets, so
after a loop turn longer than the timeout (a flood of requests parsed in a row) a reply that
came during the turn is still unread. The timer first reads what the socket holds, then, if a
call is still unanswered, looks again once the loop has polled; only a call unanswered then
has timed out (Link._expire). Nothing of this runs per call.

Why not redis-py here: its connection pool, command packing and per-call bookkeeping cost
the gateway more CPU than the Redis round trip itself (docs/benchmarks.md). On a Cluster,
cluster.py keeps one of these per master, sentinel.py one per Sentinel.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from gateway.loop_turns import after_turns
from gateway.redis.endpoint import Endpoint
from gateway.redis.resp import encode

# (host, port) of the Redis to talk to; called for every new connection, so a Sentinel
# failover is followed on reconnect
Locate = Callable[[], Awaitable[tuple[str, int]]]


NO_PASSWORD = "called without any password configured"  # Redis's answer to a needless AUTH
UNSENT = float("inf")  # the write time of calls not written yet
# loop turns a connect may still take once its deadline has passed: a TCP connect to an IP
# address takes uvloop 4 turns from start to the caller, asyncio's own loop 6 (a host name
# is looked up in a thread: that time passes on the clock, not in turns)
CONNECT_TURNS = 8


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
        self._fd = -1  # the socket, read directly when the timer fires; -1: never (TLS)
        # unanswered calls, oldest first: (future, budget, batch). `budget`: how long Redis
        # may take to answer, counted from the write; `batch`: [when its write went out, on the
        # loop's clock], shared by the calls written together (UNSENT until then)
        self._waiting: deque[tuple[asyncio.Future[Any], float, list[float]]] = deque()
        self._out: list[bytes] = []  # queued in this loop turn, not yet written
        self._batch: list[float] = [UNSENT]
        self._batch_budget = UNSENT  # the smallest budget of the calls in `_out`
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._recheck_scheduled = False

    def send(self, packed: bytes, future: asyncio.Future[Any], budget: float) -> None:
        """Queue one encoded command; `future` gets its reply, or fails when Redis has not
        answered `budget` seconds after the command was written (not after it was queued)."""
        if self.lost:
            future.set_exception(RedisConnectionLost("redis connection lost"))
            return
        self._waiting.append((future, budget, self._batch))
        self._out.append(packed)
        if budget < self._batch_budget:
            self._batch_budget = budget
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if not out:
            return
        if self.transport is None:  # not expected: a link without a socket is lost
            self.drop(RedisConnectionLost("redis connection lost"))
            return
        self.transport.write(b"".join(out))
        loop = asyncio.get_running_loop()
        now = self._batch[0] = loop.time()  # one clock read per write, none per call
        self._batch = [UNSENT]
        wake = now + min(self._batch_budget, self.timeout)
        self._batch_budget = UNSENT
        timer = self._timer
        if timer is None or wake < timer.when():  # normally an earlier write's timer is set
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(wake, self._expire)

    def _expire(self) -> None:
        """The one timer: some call may be overdue by the loop's clock. That clock is not
        Redis's silence: uvloop runs due timers before it polls the sockets, so after a long
        loop turn (hundreds of requests parsed in a row) a reply that came during the turn is
        still unread. So first read what the socket holds; if a call is still unanswered, look
        again once the loop has polled the socket (the peer's fair chance after a late timer);
        only then decide (`_decide`)."""
        self._timer = None
        if not self._waiting or self._recheck_scheduled:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next_wake(now) > now:  # nothing overdue (the calls it was set for answered)
            self._schedule(loop, now)
            return
        self._read_now()
        if self.lost or not self._waiting:
            return
        if self._next_wake(now) > now:
            self._schedule(loop, now)
            return
        self._recheck_scheduled = True
        after_turns(loop, 2, self._recheck)  # after the next poll

    def _recheck(self) -> None:
        self._recheck_scheduled = False
        if self.lost or not self._waiting:
            return
        self._read_now()  # a TLS socket is read by the poll only
        if self.lost or not self._waiting:
            return
        self._decide(asyncio.get_running_loop())

    def _decide(self, loop: asyncio.AbstractEventLoop) -> None:
        """When the oldest unanswered call has waited a whole `timeout` since it was written,
        Redis is not answering (replies come in order): every call fails and the connection
        goes. A call that is overdue sooner was sent with little of its deadline left (a
        retry, a call after a slow connect): it alone fails, and its reply is skipped when it
        comes."""
        now = loop.time()
        if self._waiting[0][2][0] + self.timeout <= now:
            self.drop(TimeoutError(f"redis did not answer within {self.timeout * 1000:g}ms"))
            return
        for future, budget, batch in self._waiting:
            if not future.done() and batch[0] + budget <= now:
                future.set_exception(TimeoutError(
                    f"redis did not answer within {self.timeout * 1000:g}ms"))
        self._schedule(loop, now)

    def _next_wake(self, now: float) -> float:
        """When the next call becomes overdue (<= `now`: one is): the oldest call's whole
        `timeout`, or a call's own budget; all counted from the writes."""
        waiting = self._waiting
        wake = waiting[0][2][0] + self.timeout
        for future, budget, batch in waiting:
            if not future.done() and batch[0] + budget < wake:
                wake = batch[0] + budget
        return wake

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        if self._waiting and self._timer is None:
            wake = self._next_wake(now)
            if wake < UNSENT:  # else only unwritten calls: their write sets the timer
                self._timer = loop.call_at(wake, self._expire)

    def _read_now(self) -> None:
        """Feed what the socket already holds (no poll needed); nothing on a TLS socket."""
        fd = self._fd
        while fd >= 0 and not self.lost:
            try:
                data = os.read(fd, 65536)
            except OSError:  # nothing to read (EAGAIN), or an error the transport reports
                return
            if not data:  # end of stream: the transport reports it
                return
            self.data_received(data)
            if len(data) < 65536:
                return

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("ssl_object") is None:
            fd = sock.fileno()
            if fd >= 0 and not os.get_blocking(fd):  # never block the loop on a read
                self._fd = fd

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
        self._fd = -1
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

        Raises TimeoutError when Redis has not answered by `deadline` (on the loop's clock;
        default `timeout` from now), counted from when the command was written rather than
        queued (a connect first, or a busy loop, does not use it up); RedisConnectionLost or
        OSError when Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        budget = self.timeout if deadline is None else deadline - now
        link = self._link
        if link is None or link.lost:
            link = await self._connect(now + budget)
        future = loop.create_future()
        link.send(packed, future, budget)
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
            attempt = self._connecting = asyncio.ensure_future(
                self._open(deadline - loop.time()))
            self._connecting_until = deadline
            attempt.add_done_callback(self._connected)
        if deadline >= self._connecting_until:
            # the attempt ends first, by what Redis did (see _open): waiting for it is enough
            link = await asyncio.shield(attempt)
        else:  # a caller with less time left than the attempt's first caller
            link = await within(attempt, deadline)
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

    async def _open(self, budget: float) -> Link:
        """A new connection, ready: TCP (or TLS) connected within `budget`, then AUTH, SELECT
        and the setup commands, each answered within `budget` of being written."""
        loop = asyncio.get_running_loop()
        link = Link(self.timeout)
        try:
            opening = asyncio.ensure_future(self._open_socket(link))
            try:
                await within(opening, loop.time() + budget)
            finally:
                if not opening.done():  # timed out (or this attempt was cancelled)
                    opening.cancel()
            endpoint = self.endpoint
            handshake = []
            if endpoint.password is not None:
                user = (endpoint.username,) if endpoint.username else ()
                handshake.append(encode("AUTH", *user, endpoint.password))
            if endpoint.db:
                handshake.append(encode("SELECT", endpoint.db))
            futures = []
            for packed in handshake + self._setup:
                futures.append(loop.create_future())
                link.send(packed, futures[-1], budget)  # the link's timer bounds them
            for reply in await asyncio.gather(*futures):
                if isinstance(reply, hiredis.ReplyError) and not (
                        self.auth_optional and NO_PASSWORD in str(reply)):
                    raise RedisReplyError(str(reply))
        except BaseException as exc:
            link.drop(RedisConnectionLost(f"connecting failed: {exc!r}"))
            raise
        return link

    async def _open_socket(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        if endpoint.path:
            await loop.create_unix_connection(lambda: link, endpoint.path)
            return
        host, port = (await self.locate()) if self.locate else endpoint.hosts[0]
        if endpoint.tls is not None and self._ssl is None:
            # here, not at load: a missing CA file is a Redis failure (logged, failure_mode
            # applies), not a gateway that cannot start
            self._ssl = endpoint.ssl_context()
        await loop.create_connection(lambda: link, host, port, ssl=self._ssl)

    async def close(self) -> None:
        """Later calls fail; a connect in progress ends by its own deadline (cancelling it
        would hand its waiters a CancelledError instead of a connection error)."""
        self._closed = True
        if self._link is not None:
            self._link.drop(RedisConnectionLost("connection closed"))


async def within(future: asyncio.Future[Any], deadline: float) -> Any:
    """`future`'s result, waited for until `deadline` (the loop's clock) and then CONNECT_TURNS
    more loop turns, so that a connect whose peer answered while the loop was busy is not
    taken for a timeout (opening a connection takes the loop several turns of its own: on an
    idle loop they take microseconds, on a loop parsing a flood of requests each can take
    longer than the whole timeout); TimeoutError if it is still not done. `future` itself is
    not cancelled (like asyncio.shield)."""
    if not future.done():
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        future.add_done_callback(wake)
        timer = loop.call_at(deadline, after_turns, loop, CONNECT_TURNS, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
        if not future.done():
            raise TimeoutError()
    return future.result()
