"""The upstream HTTP/1.1 client: one asyncio protocol per connection, a keep-alive pool per
target.

This replaces aiohttp's ClientSession for forwarded requests (WebSockets still use aiohttp):
the forwarder encodes the request head once (`encode_head`) and a connection writes it with
one `transport.write` (with the body, when the body is bytes), parses the answer with llhttp
in C (httptools' HttpResponseParser) and hands back the head as the upstream sent it (status,
reason phrase, header fields in order with their duplicates, version, keep-alive) and the body
as an async iterator of chunks. Per request that is a parser callback per field and a few
attribute writes, instead of aiohttp's URL, timeout and header bookkeeping.

The rules, and why:
- Reading pauses while more than READ_HIGH_WATER bytes are buffered and not yet taken by the
  forwarder, and resumes below READ_LOW_WATER: a fast upstream and a slow client never make
  the gateway hold a body. A streamed request body waits for the upstream's socket to drain
  (pause_writing / resume_writing).
- The read timeout is about the peer (NOTES-aiohttp.md, loop_turns.py): it counts only while
  the gateway waits for the upstream (not while the client's body or the forwarder is what
  the exchange waits for), from the last thing the upstream did, and a deadline that passed is
  confirmed after one more poll of the sockets, so that a busy loop is not a silent upstream.
  The connect timeout is confirmed the same way.
- A connection goes back to the pool only when its response was read to the end, both sides
  allow keep-alive and no byte arrived that belongs to no request (a 204 with a body, a second
  response behind the first, anything while idle): such bytes would answer the next request.
- Responses to HEAD, and 1xx, 204 and 304, have no body; interim 1xx responses (100 Continue,
  103 Early Hints) are skipped; a response framed by neither Content-Length nor chunked ends
  when the upstream closes, and its connection is not reused; a 101 (an upgrade the gateway
  never asked for here) stops the parser, and that connection is never reused.
- A response head larger than MAX_HEAD is malformed: llhttp bounds no field, the gateway must.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable
from typing import Any

import httptools
from multidict import CIMultiDict

from gateway.loop_turns import after_turns
from gateway.proxy.errors import (
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    MALFORMED,
    READ_TIMEOUT,
    UpstreamBroken,
    UpstreamFailure,
)
from gateway.settings.policy import UpstreamSettings, UpstreamTarget, UpstreamTls

READ_HIGH_WATER = 256 * 1024  # unconsumed response bytes before the upstream is paused
READ_LOW_WATER = 64 * 1024
MAX_HEAD = 64 * 1024  # a response head (with interim responses) larger than this is refused
KEEPALIVE_S = 30.0  # an idle connection older than this is closed
_JOIN_UP_TO = 64 * 1024  # buffered chunks up to this size are handed over as one

_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
# control characters a header field may not carry (CR and LF are counted separately)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def encode_head(method: str, target: str, headers: CIMultiDict[str]) -> bytes:
    """The request line and header section as bytes, joined once. A field with a control
    character (CR or LF included: header injection) is a ValueError, as with aiohttp."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ("", "")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or _CONTROL.search(text):
        raise ValueError("a control character in the request head")
    # surrogateescape: the bytes the server parser decoded, unchanged
    return text.encode("utf-8", "surrogateescape")


class _StrayBytes(Exception):
    """Bytes after the end of the response: they belong to no request."""


class UpstreamResponse:
    """The head of an upstream response as sent, and its body: `async for chunk in response`.

    `release()` when done (always): the connection goes back to the pool if it can serve
    another request, else it is closed. `close()` drops the connection whatever its state.
    """

    __slots__ = ("_connection", "headers", "keep_alive", "reason", "status", "version")

    def __init__(self, connection: UpstreamConnection, status: int, reason: str,
                 headers: list[tuple[str, str]], version: tuple[int, int],
                 keep_alive: bool) -> None:
        self._connection = connection
        self.status = status
        self.reason = reason
        self.headers = headers  # (name, value) in the order sent, duplicates kept
        self.version = version
        self.keep_alive = keep_alive

    def __aiter__(self) -> UpstreamResponse:
        return self

    # Once released, the connection may serve another request: a response that is no longer
    # its connection's current one reads nothing and releases nothing.

    async def __anext__(self) -> bytes:
        conn = self._connection
        chunk = await conn.read_chunk() if conn.current is self else b""
        if not chunk:
            raise StopAsyncIteration
        return chunk

    @property
    def complete(self) -> bool:
        """The whole body has arrived (what is left to iterate is buffered)."""
        return self._connection.current is not self or self._connection.message_done

    def release(self) -> None:
        if self._connection.current is self:
            self._connection.finish()

    def close(self) -> None:
        if self._connection.current is self:
            self._connection.finish(reuse=False)


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream; one exchange at a time (`send`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: KeepAlivePool,
                 read_timeout: float) -> None:
        self._loop = loop
        self._pool = pool
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False  # it served a request before (set when pooled)
        self.idle = False  # in the pool's idle list
        self.idle_since = 0.0
        self._parser: Any = None
        self._parser_clean = False  # the parser ended a message and can start another
        self._busy = False  # between `send` and `finish`
        self._head_only = False
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.current: UpstreamResponse | None = None  # of the exchange under way
        self._interim = False
        self.message_done = False
        self._keep_alive = False
        self._reusable = True
        self._error: UpstreamBroken | None = None
        self._received = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._client_turn = False  # the exchange waits for the client's body, not the peer
        self._peer_seen = 0.0  # when the upstream last did something (or was given work)
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._pool.opened()

    def data_received(self, data: bytes) -> None:
        self._peer_seen = self._loop.time()
        parser = self._parser
        if not self._busy or parser is None:
            # idle, or past an upgrade: nobody asked for these bytes
            self._reusable = False
            self._close_transport()
            return
        self._received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._parser = None  # a 101: what follows is another protocol's bytes
            self._reusable = False
        except httptools.HttpParserError:
            self._reusable = False
            if self.message_done:  # bytes after the end of the response
                self._close_transport()
            else:
                self._fail(MALFORMED)
            return
        if self.current is None and self._received > MAX_HEAD and self._error is None:
            self._fail(UpstreamFailure(502, "protocol", "the upstream's response head is "
                                       f"larger than {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._busy:
            self._reusable = False
            if not self.message_done and self._error is None:
                if self.current is not None and self._parser is not None \
                        and self._ends_at_eof():
                    self.message_done = True  # a body delimited by the end of the connection
                else:
                    self._error = UpstreamBroken(
                        CLOSED, stale=self.reused and self._received == 0)
            self._wake()
        self._wake_drain()
        self._pool.lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._peer_seen = self._loop.time()
        self._wake_drain()

    # --- llhttp callbacks (httptools calls them by name) ----------------------------------

    def on_message_begin(self) -> None:
        if self.message_done:
            raise _StrayBytes
        self._reason = b""
        self._raw_headers = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer is still to come
            return
        self._keep_alive = keep_alive = parser.should_keep_alive()
        self.current = UpstreamResponse(
            self, status, self._reason.decode("utf-8", "surrogateescape"),
            [(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
             for name, value in self._raw_headers],
            _VERSIONS.get(parser.get_http_version(), (1, 1)), keep_alive)
        if status == 101 or status > 599:
            self._reusable = False  # the forwarder refuses these; not HTTP it can relay
        if self._head_only:
            # llhttp cannot be told the request was HEAD: the message ends here, and this
            # parser (which may expect a body) is not used again
            self.message_done = True
            self._cancel_timer()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.message_done:
            raise _StrayBytes
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.message_done:  # a HEAD response that llhttp also saw end
            return
        self.message_done = True
        self._parser_clean = True
        self._cancel_timer()
        self._wake()

    # --- the exchange -------------------------------------------------------------------

    async def send(self, head: bytes, body: bytes | AsyncIterable[bytes] | None,
                   *, chunked: bool = False, head_only: bool = False) -> UpstreamResponse:
        """Write the request and wait for the response head. A streamed `body` is sent by a
        task of its own (chunk-encoded when `chunked`), so that an early answer is read.
        Raises UpstreamBroken; the connection is finished on any exception."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise UpstreamBroken(CLOSED, stale=self.reused)
        self._begin(head_only)
        try:
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                transport.write(head + body)
            else:
                transport.write(head)
                self._sender = self._loop.create_task(self._send_body(body, chunked))
            while self.current is None:
                if self._error is not None:
                    raise self._error
                self._waiter = waiter = self._loop.create_future()
                await waiter
            return self.current
        except BaseException:
            self.finish(reuse=False)
            raise

    def _begin(self, head_only: bool) -> None:
        self._busy = True
        if not self._parser_clean:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_clean = False
        self._head_only = head_only
        self.current = None
        self._interim = False
        self.message_done = False
        self._keep_alive = False
        self._reusable = True
        self._error = None
        self._received = 0
        self._client_turn = False
        now = self._loop.time()
        self._peer_seen = now
        self._timer = self._loop.call_at(now + self._read_timeout, self._check_silence)

    async def _send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        chunks = body.__aiter__()
        try:
            while True:
                self._client_turn = True
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._client_turn = False
                    self._peer_seen = self._loop.time()
                if not chunk:
                    continue
                if self.closed:
                    raise ConnectionResetError
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                while self._write_paused and not self.closed:
                    self._drain_waiter = waiter = self._loop.create_future()
                    await waiter
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except Exception:
            # the client's body broke (the forwarder reports it from the body) or the
            # upstream went away: this exchange cannot go on
            self._fail(CLOSED)

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises UpstreamBroken."""
        while True:
            chunks = self._chunks
            if chunks:
                if len(chunks) == 1 or self._buffered > _JOIN_UP_TO:
                    data = chunks.popleft()
                else:
                    data = b"".join(chunks)
                    chunks.clear()
                self._buffered -= len(data)
                if self._reading_paused and self._buffered <= READ_LOW_WATER \
                        and not self.closed:
                    self._reading_paused = False
                    self._peer_seen = self._loop.time()
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return data
            if self._error is not None:
                raise self._error
            if self.message_done or not self._busy:
                return b""
            self._waiter = waiter = self._loop.create_future()
            await waiter

    def finish(self, reuse: bool = True) -> None:
        """End the exchange: back to the pool when the connection can serve another request,
        else closed. Idempotent."""
        if not self._busy:
            return
        self._busy = False
        self._cancel_timer()
        sender = self._sender
        if sender is not None:
            self._sender = None
            if not sender.done():
                sender.cancel()
                reuse = False  # the request was not written to its end
        self.current = None
        self._chunks.clear()
        self._buffered = 0
        if reuse and self.message_done and self._keep_alive and self._reusable \
                and self._error is None and not self.closed:
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            self.reused = True
            self._pool.checkin(self)
        elif not self.closed and self.transport is not None:
            if self.message_done:
                self.transport.close()
            else:
                self.transport.abort()  # mid-message: nothing more of it is wanted

    # --- helpers ------------------------------------------------------------------------

    def _ends_at_eof(self) -> bool:
        """The response is framed by the end of the connection: neither Content-Length nor
        a Transfer-Encoding ending in chunked."""
        for name, value in self._raw_headers:
            lowered = name.lower()
            if lowered == b"content-length":
                return False
            if lowered == b"transfer-encoding" and \
                    value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                return False
        return True

    def _fail(self, failure: UpstreamFailure) -> None:
        if self._error is None and not self.message_done:
            self._error = UpstreamBroken(failure)
        self._reusable = False
        self._cancel_timer()
        self._wake()
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_silence(self) -> None:
        self._timer = None
        if not self._busy or self.message_done or self._error is not None:
            return
        now = self._loop.time()
        if self._client_turn or self._chunks or self._reading_paused:
            self._peer_seen = now  # the exchange waits for the client or the forwarder
        deadline = self._peer_seen + self._read_timeout
        if deadline > now:
            self._timer = self._loop.call_at(deadline, self._check_silence)
            return
        seen = self._peer_seen
        # the upstream looks silent: ask again after the loop polled its sockets once more
        after_turns(self._loop, 2, lambda: self._confirm_silence(seen))

    def _confirm_silence(self, seen: float) -> None:
        if not self._busy or self.message_done or self._error is not None \
                or self._timer is not None:
            return
        if self._peer_seen != seen or self._client_turn:
            self._check_silence()
        else:
            self._fail(READ_TIMEOUT)


class _Budget:
    """Open connections across the targets of one upstream, bounded by max_connections:
    a new connection beyond the bound first closes an idle one."""

    __slots__ = ("limit", "open", "pools")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.pools: list[KeepAlivePool] = []

    def make_room(self) -> None:
        if self.open < self.limit:
            return
        for pool in self.pools:
            if pool.close_oldest_idle():
                return


def client_context(tls: UpstreamTls | None) -> ssl.SSLContext:
    """TLS to an https:// target: verified against the policy's CAs (else the system's), TLS
    1.2 at least, HTTP/1.1 by ALPN, the gateway's certificate when the upstream asks for one."""
    context = ssl.create_default_context(cafile=tls.ca if tls is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if tls is not None and tls.cert is not None:
        context.load_cert_chain(tls.cert, tls.key)
    return context


class KeepAlivePool:
    """Connections to one target: idle ones reused last-in first-out (the warmest socket,
    and the oldest expire), closed after KEEPALIVE_S idle or when the upstream closes them."""

    __slots__ = ("_budget", "_closed", "_connect_timeout", "_idle", "_loop", "_read_timeout",
                 "_ssl", "_sweeper", "authority", "base_url", "target")

    def __init__(self, target: UpstreamTarget, settings: UpstreamSettings,
                 budget: _Budget) -> None:
        self.target = target
        self.authority = target.authority  # the Host value, computed once
        self.base_url = target.base_url  # the name in metrics and logs
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._ssl = client_context(settings.tls) if target.scheme == "https" else None
        self._budget = budget
        budget.pools.append(self)
        self._idle: deque[UpstreamConnection] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.closed:
                continue
            assert self._loop is not None
            if self._loop.time() - conn.idle_since >= KEEPALIVE_S:
                # the others were idle longer still
                self._close_idle(conn)
                while idle:
                    self._close_idle(idle.pop())
                return None
            return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection; UpstreamBroken (connect failure or timeout) when none comes."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._budget.make_room()
        target = self.target
        attempt = loop.create_task(loop.create_connection(
            lambda: UpstreamConnection(loop, self, self._read_timeout), target.host,
            target.port, ssl=self._ssl, server_hostname=target.host if self._ssl else None))
        expired = False

        def expire() -> None:
            nonlocal expired
            if not attempt.done():
                expired = True
                attempt.cancel()

        # the deadline is confirmed after one more poll: a handshake that completed while
        # the loop was busy is seen first (loop_turns.py)
        timer = loop.call_later(self._connect_timeout, after_turns, loop, 2, expire)
        try:
            _, conn = await attempt
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if expired and (task is None or not task.cancelling()):
                raise UpstreamBroken(CONNECT_TIMEOUT) from None
            raise
        except OSError as exc:
            raise UpstreamBroken(CONNECT_FAILED) from exc
        finally:
            timer.cancel()
        return conn

    def opened(self) -> None:
        self._budget.open += 1

    def checkin(self, conn: UpstreamConnection) -> None:
        """A connection whose exchange ended cleanly, ready for another."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        if self._closed or len(self._idle) >= self._budget.limit:
            self._close_idle(conn)
            return
        conn.idle = True
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + KEEPALIVE_S, self._sweep)

    def lost(self, conn: UpstreamConnection) -> None:
        """The connection closed (either side)."""
        self._budget.open -= 1
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)

    def close_oldest_idle(self) -> bool:
        while self._idle:
            conn = self._idle.popleft()
            conn.idle = False
            if not conn.closed:
                self._close_idle(conn)
                return True
        return False

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            self._close_idle(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = self._loop
        assert loop is not None
        idle = self._idle
        now = loop.time()
        while idle and now - idle[0].idle_since >= KEEPALIVE_S:
            conn = idle.popleft()
            conn.idle = False
            self._close_idle(conn)
        if idle:
            self._sweeper = loop.call_at(idle[0].idle_since + KEEPALIVE_S, self._sweep)

    @staticmethod
    def _close_idle(conn: UpstreamConnection) -> None:
        if not conn.closed and conn.transport is not None:
            conn.transport.close()


def keepalive_pools(settings: UpstreamSettings) -> tuple[KeepAlivePool, ...]:
    """One pool per target of `settings`, sharing the bound of max_connections."""
    budget = _Budget(settings.max_connections)
    return tuple(KeepAlivePool(target, settings, budget) for target in settings.targets)

