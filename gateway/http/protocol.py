"""The connection layer: HTTP/1.1 served by an asyncio protocol over llhttp (httptools).

One `Connection` per client connection parses request heads with llhttp in C and hands the
handler one `Exchange` per request: the head, a body reader with flow control, and a writer
that sends a whole answer in one write (or a head, then streamed chunks, with drain). No web
framework object is made per request. On top of what llhttp refuses, it adds:

- a deadline for each request head (`timeouts.header`), armed when the connection opens and
  when the first byte of each following request arrives, pipelined behind a request still
  being answered or not; confirmed after one more poll of the loop (gateway/loop_turns.py), so
  a busy loop is not taken for a silent client. Keep-alive idleness between requests has its
  own timeout (`timeouts.idle`);
- a deadline for each wait on a request body (`timeouts.body`, given by the reader), kept by
  the connection on one timer re-armed lazily, not a timer per read: when it passes, the
  connection answers `408` from bytes encoded once (http/problem.py `PrebuiltProblem`) and
  ends, and the reader gets `BodyTimeout` saying so (the handler then only accounts for it);
- expired head and body deadlines are handled a bounded slice per loop turn (http/reaper.py):
  a crowd of slow clients cut together does not hold up everyone else's requests; nor does a
  crowd of new connections whose first bytes come together: a bounded number of them are
  handled per loop turn, the others wait, reading paused, in arrival order (http/arrivals.py);
- bounds on the head: a request line over `limits.max_header_size` is 414, a field line over
  it or more than `limits.max_headers` fields is 431 (llhttp has no such bounds), and the
  checks of http/framing.py (duplicate or missing Host, an upgrade with a body);
- nothing carries from one message into the next: a request with a chunked body ends its
  connection (its trailers are never read as fields, and nothing pipelined behind it is
  parsed) and its answer says `Connection: close`. So does a request that says
  `Connection: close`;
- request bodies bounded in the bytes they take on the wire, not only in their decoded size:
  chunk extensions and chunk framing count too (a 1-byte body wrapped in 256 KiB of chunk
  extensions is a 413), at most twice `limits.max_body_size` plus 64 KiB;
- a response that ends the connection while the request body is unread (413, 408, ...)
  half-closes it (RFC 9112 9.6): the client sees the end at once, while the rest of its body is
  still read and dropped for a while (LINGER), so that its unread bytes cannot reset the answer
  away. A keep-alive answer with the body unread drops the rest of that body and goes on;
- overload refusal at accept: beyond `limits.max_connections` open connections, or when the
  handler is at its limit of requests in progress, a connection gets 503 before anything is
  read, then half-closes and lingers (REFUSED_LINGER);
- the gateway's own problem+json for requests it cannot read: 414, 431, 505, 400 otherwise,
  each with an `X-Request-ID` and the default security headers, naming no software and never
  echoing the input;
- pipelined requests are answered in order (at most PIPELINE_DEPTH parsed ahead);
- on `Exchange.switch_protocols` (a WebSocket the upstream accepted) the connection becomes a
  byte tunnel: what arrives goes to the relay (proxy/websocket.py), which checks the frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.arrivals import Arrivals
from gateway.http.forwarding import new_request_id
from gateway.http.framing import (
    LINE_TOO_LONG,
    MALFORMED,
    HeadRefusal,
    bare_cr_before_request,
    bare_crs,
    field_refusal,
    head_refusal,
    parse_failure,
    unfinished_head_refusal,
)
from gateway.http.problem import PrebuiltProblem, problem_bytes, problem_response
from gateway.http.reaper import Reaper
from gateway.http.response import BODYLESS_STATUSES, Answer, connection_line, encode_head
from gateway.loop_turns import after_turns
from gateway.observability.metrics import CLIENT_TIMEOUTS, TLS_HANDSHAKES

log = logging.getLogger("gateway.http")

REFUSED_LINGER = 1.0  # seconds a connection refused at connect is drained before it closes
LINGER = 2.0  # seconds an answered connection's unread request body is drained
PIPELINE_DEPTH = 8  # requests parsed ahead of the one being answered before reading pauses
BODY_HIGH = 256 * 1024  # buffered body bytes above which reading pauses
BODY_LOW = 64 * 1024  # ... and below which it resumes
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)  # how a streamed response body is framed


class RequestBodyFlood(Exception):
    """The body took more bytes on the wire than its size limit allows (chunk extensions)."""


class MalformedBody(Exception):
    """llhttp refused the request's body framing (chunk sizes, terminators) mid-body."""


class BodyTimeout(Exception):
    """No body bytes arrived within the reader's timeout. `answered`: the connection has
    sent the `408` and is ending; the reader only has to stop (and account for it)."""

    def __init__(self, answered: bool) -> None:
        super().__init__(answered)  # (its args: what a copy is made from)
        self.answered = answered

    def __str__(self) -> str:
        return "request body not received in time"


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp parsing what follows."""


class Body:
    """A request body as it arrives: chunks read with `readany` (b"" at its end)."""

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_size", "_waiter", "discarding")

    def __init__(self, conn: Connection | None) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = conn is None
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.discarding = False  # answered already: what still arrives is dropped

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return self._size

    def is_eof(self) -> bool:
        """Whether the whole body has arrived (it may not all be read yet)."""
        return self._eof

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        if self.discarding or self._exc is not None:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH and self._conn is not None:
            self._conn.sync_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def discard(self) -> None:
        """Nobody reads the rest: drop what is buffered and what still arrives."""
        self.discarding = True
        self._chunks.clear()
        self._size = 0

    async def readany(self, timeout: float | None = None) -> bytes:
        """The next piece of the body, b"" at its end; raises what broke it, and BodyTimeout
        when nothing arrives within `timeout` seconds (None: no bound)."""
        while not self._chunks:
            if self._exc is not None:
                self._raise()
            if self._eof:
                return b""
            conn = self._conn
            assert conn is not None
            self._waiter = conn.loop.create_future()
            if timeout is not None:
                conn.await_body(self, timeout)
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._exc is not None:
            self._raise()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        conn = self._conn
        if conn is not None and conn.reading_paused and self._size < BODY_LOW:
            conn.sync_reading()
        return chunk

    def _raise(self) -> None:
        """Raise what broke the body, as a copy: the one kept here (raised again by a later
        read) then holds no traceback, whose frames would hold this body (a reference
        cycle, left to the garbage collector)."""
        exc = self._exc
        assert exc is not None
        raise copy.copy(exc)

    def waiting(self) -> bool:
        """Whether a reader waits for bytes now."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    async def read(self) -> bytes:
        """The whole body (the caller bounds it: Content-Length was checked)."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)


_EMPTY = Body(None)


class TunnelSink(Protocol):
    """What a connection turned into a tunnel reports to (proxy/websocket.py)."""

    def data(self, data: bytes) -> None: ...
    def lost(self, exc: BaseException | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class Exchange:
    """One request on a connection, and the writer of its answer."""

    __slots__ = ("_conn", "_head", "_mode", "body", "bytes_out", "chunked", "content_length",
                 "continued", "finished", "has_body", "headers", "keep_alive", "method", "peer",
                 "request_id", "secure", "started", "status", "switched", "target", "upgrade",
                 "version")

    def __init__(self, conn: Connection, method: str, target: str,
                 headers: CIMultiDictProxy[str], version: tuple[int, int],
                 content_length: int | None, chunked: bool, keep_alive: bool, upgrade: bool,
                 body: Body) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # the raw request target
        self.headers = headers
        self.version = version
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = body is not _EMPTY
        self.keep_alive = keep_alive  # per the request (version, Connection)
        self.upgrade = upgrade  # llhttp saw an upgrade (or CONNECT): bytes after it are held
        self.body = body
        self.peer = conn.peer
        self.secure = conn.secure
        self.started = False  # some byte of the final answer is out (or queued)
        self.finished = False  # the answer is complete (or aborted)
        self.switched = False  # the connection became a tunnel
        self.continued = False  # `100 Continue` was sent
        self.status = 0
        self.bytes_out = 0  # body bytes of the answer
        self.request_id = ""  # the handler's choice, for an answer the connection writes
        self._head: bytes | None = None  # a streamed answer's head, sent with its first bytes
        self._mode = _NONE

    def _keep(self, close: bool) -> bool:
        keep = self.keep_alive and not close and not self._conn.closing
        if keep and not self.continued and not self.body.is_eof() and "Expect" in self.headers:
            # the client waits for `100 Continue` before its body and may never send it: what
            # follows on the connection could be that body or the next request, so it ends
            keep = False
        self.keep_alive = keep
        return keep

    def send(self, answer: Answer) -> None:
        """Send a whole answer: head and body in one write."""
        self.started = self.finished = True
        self.status = answer.status
        keep = self._keep(answer.close)
        head_only = self.method == "HEAD"
        self.bytes_out = 0 if head_only else len(answer.body)
        self._conn.write(answer.encode(keep, self.version, head_only))

    def send_prebuilt(self, answer: PrebuiltProblem) -> None:
        """Send an answer encoded once (`PrebuiltProblem`), which ends the connection."""
        self.started = self.finished = True
        self.status = answer.status
        self.keep_alive = False
        head_only = self.method == "HEAD"
        self.bytes_out = 0 if head_only else answer.body_size
        self._conn.write(answer.encode(self.request_id or new_request_id(), head_only))

    def send_continue(self) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send its body (RFC 9110
        10.1.1). The final answer still counts as not started: it can be any answer."""
        self.continued = True
        self._conn.write(_CONTINUE)

    def start(self, status: int, reason: str | None, headers: CIMultiDict[str],
              close: bool = False) -> None:
        """Begin a streamed answer. Its body is framed by the Content-Length in `headers`,
        else chunked (HTTP/1.1) or by the end of the connection (HTTP/1.0); none for HEAD,
        204 and 304. The head goes out with the first body bytes."""
        self.started = True
        self.status = status
        keep = self._keep(close)
        extra = ""
        if self.method == "HEAD" or status in BODYLESS_STATUSES or status < 200:
            self._mode = _NONE
        elif "Content-Length" in headers:
            self._mode = _LENGTH
        elif self.version >= (1, 1):
            self._mode = _CHUNKED
            extra = "Transfer-Encoding: chunked\r\n"
        else:
            self._mode = _UNTIL_CLOSE
            keep = self.keep_alive = False
        self._head = encode_head(status, reason, headers.items(),
                                 connection_line(keep, self.version) + extra,
                                 date="Date" not in headers)

    async def write(self, chunk: bytes) -> None:
        """Send a piece of a streamed answer's body; waits while the client is slow."""
        if not chunk or self._mode == _NONE:
            return
        self.bytes_out += len(chunk)
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._mode == _CHUNKED else chunk
        if self._head is not None:
            data = self._head + data
            self._head = None
        conn = self._conn
        conn.write(data)
        if conn.writing_paused:
            await conn.drain()

    async def end(self) -> None:
        """Complete a streamed answer."""
        data = b"0\r\n\r\n" if self._mode == _CHUNKED else b""
        if self._head is not None:
            data = self._head + data
            self._head = None
        self.finished = True
        if data:
            self._conn.write(data)
        if self._mode == _UNTIL_CLOSE:
            self.keep_alive = False

    def abort(self) -> None:
        """End the connection without a clean end of message: what was sent stays an
        incomplete message (a truncated upstream body must not look complete)."""
        self.finished = True
        self.keep_alive = False
        self._conn.abort()

    def switch_protocols(self, head: bytes, sink: TunnelSink) -> asyncio.Transport:
        """Send the `101` head and turn the connection into a tunnel to `sink`; returns the
        client's transport. Bytes the client sent after the handshake go to `sink` first."""
        self.started = self.finished = self.switched = True
        self.status = 101
        return self._conn.tunnel(head, sink)


Handler = Callable[[Exchange], Awaitable[None]]


class Connection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.secure = False
        self.closing = False  # answers say Connection: close; the connection ends after them
        self.reading_paused = False
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # (it holds this protocol for its callbacks: let go once the connection is lost)
        self._parser: Any = httptools.HttpRequestParser(self)
        # the head being parsed
        self._in_head = False
        self._awaiting_head = False  # a head is due: the connection is new, or one began
        self._began_now = False
        self._url: list[bytes] = []
        self._url_len = 0
        self._fields: list[tuple[str, str]] = []
        self._hosts = 0
        self._head_bytes = 0
        self._refusal: HeadRefusal | None = None  # found by a callback
        # between requests (framing.py: a bare CR there is refused)
        self._between = True  # no request begun since the last ended (or the connection began)
        self._cr_pending = False  # between requests, the last read ended in a CR
        self._ended_now = False  # a request ended in the bytes being parsed
        self._boundary_now = False  # ... and another began after it in them
        self._feed_bodies: list[bytes] = []  # body pieces in the bytes being parsed
        self._body_ends_cr = False  # the last request's body ended in a CR
        # requests
        self._parsing: Exchange | None = None  # whose body is being parsed
        self._last: Exchange | None = None  # the last head parsed
        self._wire = 0  # bytes received while `_parsing`'s body is open
        self._queue: deque[Exchange] = deque()  # parsed, not yet handled
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = False  # nothing more is parsed (chunked request, close, refusal)
        self._pending: HeadRefusal | None = None  # answered after the requests before it
        self._held: bytearray | None = None  # bytes after an upgrade, until it is decided
        self._tunnel: TunnelSink | None = None
        self._refused = False  # answered 503 at connect
        self._admitted = False  # its first bytes were handled (http/arrivals.py)
        self._early: bytearray | None = None  # ... or wait for their turn
        self._lingering = False  # answered and half-closed: what arrives is dropped
        # timers
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None
        # the body a reader waits on, until when, and the one timer that watches it
        self._body_wait: Body | None = None
        self._body_deadline = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    # ---- connection events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: Any = transport
        self.transport = tcp
        server = self.server
        if tcp.get_extra_info("sslcontext") is not None:
            TLS_HANDSHAKES.labels("completed").inc()  # (tls.py counts the started ones)
        if len(server.connections) >= server.max_connections():
            self._refuse(tcp, "connections",
                         "the gateway is at its connection limit; retry shortly")
            return
        if server.requests_full():
            # its request would be refused by the handler anyway: answered here, before any
            # parsing, which is what keeps an overloaded worker serving what it admitted
            self._refuse(tcp, "requests",
                         "the gateway is at its limit of requests in progress; retry shortly")
            return
        server.connections.add(self)
        peer = tcp.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.secure = tcp.get_extra_info("sslcontext") is not None
        self._awaiting_head = True
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.Transport, reason: str, detail: str) -> None:
        """Answer 503 at once without reading anything, then half-close: a request the client
        already sent is read and dropped until it closes (or REFUSED_LINGER passes), so that
        its unread bytes cannot reset the answer away."""
        server = self.server
        server.count_overload(reason)
        server.count_error(503)
        self._refused = True
        out = server.error_headers()
        out["Retry-After"] = "1"
        transport.write(problem_bytes(503, detail, out, new_request_id()))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(REFUSED_LINGER, transport.close)

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            return True  # the relay closes it once the other side is done
        # the client is done: the transport closes, and a request still being answered is
        # cancelled with its upstream exchange (a client that went away waits for nothing)
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timers()
        self.transport = None
        if self._refused:
            return
        self.server.connection_gone()
        if self._tunnel is not None:
            self._tunnel.lost(exc)
            return
        lost = ConnectionResetError("the client closed the connection")
        for ex in (self._parsing, self._active, *self._queue):
            if ex is not None and not ex.body.is_eof():
                ex.body.set_exception(lost)
        self._queue.clear()
        # what points back at this connection (the parser, the exchanges) is let go, so that
        # reference counting frees it now: cycles are left for the garbage collector, whose
        # full collections stop the loop for as long as they walk every live object (tens of
        # ms with a few thousand connections open)
        self._parser = None
        self._parsing = self._last = None
        if self._task is not None:
            self._task.cancel()  # the client is gone: so is the upstream request
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(lost)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._tunnel is not None:
            self._tunnel.resume_writing()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the client has read enough of the answer. A client that reads nothing
        for `timeouts.idle` is cut (nginx's send_timeout): it would otherwise hold the
        request's upstream connection for as long as it keeps its socket open."""
        if not self.writing_paused:
            return
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        waiter = self._drain_waiter = self.loop.create_future()
        # confirmed after one more poll of the sockets: a busy loop is not a stalled reader
        timer = self.loop.call_later(self.server.idle_timeout, after_turns, self.loop, 2,
                                     lambda: self._send_stalled(waiter))
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def _send_stalled(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() or not self.writing_paused or self.transport is None:
            return
        # counted, not logged at info: a flood of slow clients would flood the log (nginx logs
        # these at info, below its default error_log level)
        CLIENT_TIMEOUTS.labels("send").inc()
        log.debug("client %s read nothing of its answer for %gs: connection closed", self.peer,
                  self.server.idle_timeout)
        self.transport.abort()  # connection_lost fails the waiter and ends the exchange

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        self.closing = True
        self._stop = True
        if self.transport is not None:
            self.transport.close()  # what was written is flushed, then the FIN

    # ---- bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.data(data)
            return
        if self._held is not None:
            self._held += data
            return
        if self._stop or self._refused or self._lingering:
            return  # dropped: see the module's docstring
        if not self._admitted:
            arrivals = self.server.arrivals
            if self._early is not None:  # still waiting for its turn (a late read)
                self._early += data
                return
            if arrivals is not None and not arrivals.take():
                # a crowd of new connections: handled in a later turn (http/arrivals.py)
                self._early = bytearray(data)
                self.sync_reading()
                arrivals.wait(self._arrived)
                return
            self._admitted = True
        parsing = self._parsing
        if parsing is not None:
            self._wire += len(data)
            if self._wire > 2 * self.server.max_body() + 65536 and not parsing.body.is_eof() \
                    and not parsing.finished:
                parsing.body.set_exception(RequestBodyFlood(
                    "request body framing exceeds the size limit"))
        self._began_now = False
        queued = len(self._queue)
        if self._between and (self._cr_pending or data[:1] in (b"\r", b"\n")):
            lead = bare_cr_before_request(b"\r" + data if self._cr_pending else data)
            self._cr_pending = lead is None
            if lead:
                self._refuse_head(MALFORMED)
                return
        self._ended_now = self._boundary_now = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._hold_after_upgrade(data, exc.args[0])
        except httptools.HttpParserError as exc:
            refusal = self._refusal or (None if self._stop else parse_failure(str(exc)))
            if refusal is not None:
                if self._parsing is None:
                    # bytes holding a malformed head are refused whole: requests parsed from
                    # the same read are dropped unhandled (none of them has begun)
                    while len(self._queue) > queued:
                        self._queue.pop()
                self._refuse_head(refusal)
        else:
            if self._boundary_now and bare_crs(data) > sum(
                    bare_crs(piece) + piece.endswith(b"\r") for piece in self._feed_bodies):
                # a bare CR that no body holds: between two requests of these bytes
                while len(self._queue) > queued:
                    self._queue.pop()
                self._parsing = None
                self._refuse_head(MALFORMED)
            elif self._in_head:
                self._head_in_progress(data)
            elif self._between and self._ended_now and data.endswith(b"\r") \
                    and not self._body_ends_cr:
                self._cr_pending = True  # after the request that ended: its LF may come next
        self._feed_bodies.clear()
        if self._active is None and self._queue and self.transport is not None:
            self._next()

    def _arrived(self) -> None:
        """This new connection's turn: its first bytes are handled, and it reads freely."""
        self._admitted = True
        data, self._early = self._early, None
        if self.transport is None or data is None:
            return  # the client left while it waited
        self.sync_reading()
        self.data_received(bytes(data))

    def _head_in_progress(self, data: bytes) -> None:
        """A head is still incomplete after `data`: bound it, and put its deadline on."""
        server = self.server
        if not self._began_now:  # (a head begun in these bytes is counted from the next)
            self._head_bytes += len(data)
        refusal = unfinished_head_refusal(self._head_bytes, server.max_line_size,
                                          server.max_field_size, server.max_headers)
        if refusal is not None:
            self._stop = True
            self._refuse_head(refusal)
            return
        if self._head_timer is None:
            self._arm_head_timer()

    # ---- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._stop:
            raise _Stop
        self._in_head = self._awaiting_head = self._began_now = True
        self._boundary_now = self._ended_now
        self._between = self._body_ends_cr = False
        self._idle_since = None
        self._url = []
        self._url_len = 0
        self._fields = []
        self._hosts = 0
        self._head_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self._url.append(piece)
        self._url_len += len(piece)
        if self._url_len > self.server.max_line_size:
            self._refusal = LINE_TOO_LONG
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: never read (the connection ends after a chunked body)
        server = self.server
        fields = self._fields
        refusal = field_refusal(name, value, len(fields) + 1, server.max_field_size,
                                server.max_headers)
        if refusal is not None:
            self._refusal = refusal
            raise _Stop
        if len(name) == 4 and name.lower() == b"host":
            self._hosts += 1
        # a field value has no surrounding whitespace (RFC 9110 5.5); llhttp keeps the trailing
        fields.append((name.decode("ascii", "surrogateescape"),
                       value.rstrip(b" \t").decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parser = self._parser
        raw_version = parser.get_http_version()
        version = (int(raw_version[0]), int(raw_version[2])) if len(raw_version) == 3 \
            else (0, 9)
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        chunked = "Transfer-Encoding" in headers
        length_field = headers.get("Content-Length")
        length = int(length_field) if length_field is not None else None
        upgrade = parser.should_upgrade()
        has_body = chunked or bool(length)
        refusal = head_refusal(version, self._hosts, upgrade and has_body,
                               headers.get("Transfer-Encoding"))
        if refusal is not None:
            self._refusal = refusal
            raise _Stop
        body = Body(self) if has_body else _EMPTY
        ex = Exchange(self, parser.get_method().decode("ascii"),
                      b"".join(self._url).decode("utf-8", "surrogateescape"), headers, version,
                      length, chunked, parser.should_keep_alive() and not chunked, upgrade,
                      body)
        self._last = ex
        if has_body:
            self._parsing = ex
            self._wire = 0
        self._queue.append(ex)  # handled once these bytes are parsed (data_received)
        if len(self._queue) >= PIPELINE_DEPTH:
            self.sync_reading()

    def on_body(self, data: bytes) -> None:
        self._feed_bodies.append(data)  # (counted only if a request begins after it)
        self._body_ends_cr = data.endswith(b"\r")
        parsing = self._parsing
        if parsing is not None:
            parsing.body.feed(data)

    def on_message_complete(self) -> None:
        self._between = self._ended_now = True
        ex = self._last
        if ex is None:
            return
        parsing = self._parsing
        if parsing is not None:
            parsing.body.feed_eof()
            self._parsing = None
            if self.reading_paused:
                self.sync_reading()
        if ex.chunked or not ex.keep_alive:
            # trailers must never reach the next request; nor is anything after a `close`
            self.closing = ex.chunked or self.closing
            ex.keep_alive = False
            self._stop = True

    def _hold_after_upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped after a request that asks for an upgrade (or CONNECT): the bytes
        after it are held until its answer says what they are (frames, or the next request)."""
        self._held = bytearray(data[offset:])
        self.sync_reading()

    # ---- requests and answers ---------------------------------------------------------------

    def _next(self) -> None:
        ex = self._queue.popleft()
        self._active = ex
        self._task = self.loop.create_task(self._run(ex))

    async def _run(self, ex: Exchange) -> None:
        try:
            await self.server.handler(ex)
        except asyncio.CancelledError:
            return  # the client went away
        except ConnectionError:
            if ex.started and not ex.finished:
                ex.abort()
        except Exception:
            log.exception("unhandled error in request handler")
            if not ex.started:
                self.server.count_error(500)
                ex.send(problem_response(500, "internal gateway error",
                                         request_id=new_request_id(),
                                         headers=self.server.error_headers(), close=True))
            elif not ex.finished:
                ex.abort()
        finally:
            if self._active is ex:
                self._done(ex)

    def _done(self, ex: Exchange) -> None:
        self._active = None
        self._task = None
        if self.transport is None or ex.switched:
            return
        if not ex.finished:  # the handler wrote nothing final: end it as it stands
            ex.abort()
        if not ex.keep_alive or (self.closing and not self._queue):
            self._end(ex)
            return
        if not ex.body.is_eof():
            ex.body.discard()  # read and dropped as it arrives: reading goes on
            self.sync_reading()
        if self._held is not None:  # an upgrade that was not taken: the next request
            held, self._held = bytes(self._held), None
            self.sync_reading()
            if held:
                self.data_received(held)
                if self.transport is None or self._active is not None:
                    return
        if self._queue:
            self._next()
            if self.reading_paused:
                self.sync_reading()
        elif self._pending is not None:
            self._send_refusal(self._pending)
        elif not self._awaiting_head:
            self._idle_since = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.server.idle_timeout,
                                                        self._idle_fired)

    def _end(self, ex: Exchange | None) -> None:
        """The connection ends after what was written. With a request body unread, it is
        half-closed and lingers, reading and dropping (RFC 9112 9.6)."""
        transport = self.transport
        if transport is None or self._lingering:  # (ended already: lingering until closed)
            return
        self._stop = True
        self._cancel_timers()
        unread = (ex is not None and not ex.body.is_eof()) or self._parsing is not None \
            or self._held is not None
        if unread and transport.can_write_eof():
            self._lingering = True
            self._held = None
            if ex is not None:
                ex.body.discard()
            transport.write_eof()
            self.sync_reading()
            self.loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    def _refuse_head(self, refusal: HeadRefusal) -> None:
        """A head the gateway cannot read: answered in its turn, then the connection ends."""
        self._stop = True
        self._in_head = self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parsing = self._parsing
        if parsing is not None:
            # the body of a request being handled broke: that request's answer says so (400),
            # and the connection ends after it
            self._parsing = None
            if parsing.finished:  # answered already, its body being dropped: just end
                self._end(None)
                return
            parsing.body.set_exception(MalformedBody("malformed request body"))
            parsing.keep_alive = False
            return
        if self._active is not None or self._queue:
            self._pending = refusal  # answered in its turn, after the requests before it
            return
        self._send_refusal(refusal)

    def _send_refusal(self, refusal: HeadRefusal) -> None:
        server = self.server
        server.count_error(refusal.status)
        self.write(problem_bytes(refusal.status, refusal.detail, server.error_headers(),
                                 new_request_id()))
        self._end(None)

    def tunnel(self, head: bytes, sink: TunnelSink) -> asyncio.Transport:
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("the client closed the connection")
        self._cancel_timers()
        self._tunnel = sink
        transport.write(head)
        held, self._held = self._held, None
        self._stop = True
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if held:
            self.loop.call_soon(sink.data, bytes(held))
        return transport

    def sync_reading(self) -> None:
        """Pause reading while a body's buffer is full, too many requests wait, or the bytes
        after an upgrade are held; resume when none is so."""
        transport = self.transport
        if transport is None or self._tunnel is not None:
            return
        parsing = self._parsing
        want = ((self._held is not None and not self._lingering)
                or self._early is not None
                or len(self._queue) >= PIPELINE_DEPTH
                or (parsing is not None and parsing.body.buffered > BODY_HIGH
                    and not parsing.body.discarding))
        if want != self.reading_paused:
            self.reading_paused = want
            if want:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def shutdown(self) -> None:
        """The server is stopping: an idle connection ends now, a busy one after its answer."""
        self.closing = True
        if self._tunnel is not None:
            return
        if self._active is None and not self._queue and self._early is None \
                and self.transport is not None:
            self._stop = True
            self._end(None)

    # ---- timers -----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.server.header_timeout,
                                                self._head_timer_fired)

    def _head_timer_fired(self) -> None:
        # bytes that arrived while the loop was busy are read in its next poll: confirm the
        # silence after it (gateway/loop_turns.py), unless the head completes meanwhile
        fired = self._head_timer
        after_turns(self.loop, 2, lambda: self.server.reaper.add(
            lambda: self._head_timer is fired and self._head_timed_out()))

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport is None:
            return
        if self._early is not None:
            # its bytes came and wait for their turn (http/arrivals.py): the gateway's lag,
            # not the client's silence; a head they leave unfinished gets a new deadline
            return
        CLIENT_TIMEOUTS.labels("header").inc()  # (not logged at info: see _send_stalled)
        log.debug("closing connection: request head not received within %ss",
                  self.server.header_timeout)
        self._stop = True
        self._awaiting_head = self._in_head = False
        if self._active is not None or self._queue:
            # the head was pipelined behind a request still being answered: that answer
            # completes, then the connection closes with the partial head unread
            self.closing = True
            return
        self._end(None)

    def _idle_fired(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self._active is not None or self._awaiting_head \
                or self.transport is None:
            return
        left = since + self.server.idle_timeout - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_fired)
            return
        self._end(None)

    def await_body(self, body: Body, timeout: float) -> None:
        """A reader waits for bytes of `body` from now, for at most `timeout` seconds. One
        timer per connection, re-armed lazily when it fires early (as `_idle_fired`): a body
        read in many pieces costs no timer per read."""
        self._body_wait = body
        self._body_deadline = self.loop.time() + timeout
        if self._body_timer is None:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_timer_fired)

    def _body_timer_fired(self) -> None:
        self._body_timer = None
        body = self._body_wait
        if body is None or not body.waiting() or self.transport is None:
            return  # nobody waits now: the next wait arms it again
        left = self._body_deadline - self.loop.time()
        if left > 0:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_timer_fired)
            return
        # confirmed after one more poll (bytes may be waiting in the socket), then cut in turn
        deadline = self._body_deadline
        after_turns(self.loop, 2, lambda: self.server.reaper.add(
            lambda: self._body_timed_out(body, deadline)))

    def _body_timed_out(self, body: Body, deadline: float) -> None:
        if self._body_wait is not body or self._body_deadline != deadline \
                or not body.waiting() or self.transport is None:
            return  # bytes came meanwhile (or the wait ended): not silent
        self._body_wait = None
        ex = self._active
        answered = False
        if ex is not None and ex.body is body and not ex.started:
            # the 408 is written here, from bytes encoded once; the handler only accounts
            ex.send_prebuilt(self.server.body_timeout_answer())
            answered = True
        body.set_exception(BodyTimeout(answered))
        if answered:
            self._end(ex)  # half-closed: the rest of the body is read and dropped a while

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = self._body_timer = None
        self._body_wait = None


class GatewayServer:
    """Makes a `Connection` for each client connection (the protocol factory of
    loop.create_server) and knows the open ones, for the connection bound and for shutdown.

    `error_headers` gives the headers for answers to unreadable requests (the default
    security headers); `count_error` counts such an answer by status. `max_body`,
    `max_connections` and `requests_full` are read when needed: they follow a reload.
    `pace_arrivals` handles new connections' first bytes a bounded number per loop turn
    (http/arrivals.py): the public listener's, not the admin's.
    """

    def __init__(self, handler: Handler, *, header_timeout: float,
                 error_headers: Callable[[], CIMultiDict[str]],
                 count_error: Callable[[int], None],
                 idle_timeout: float = 75.0,
                 max_line_size: int = 8190,
                 max_field_size: int = 8190,
                 max_headers: int = 128,
                 max_body: Callable[[], int] = lambda: 10 * 1024 * 1024,
                 max_connections: Callable[[], int] = lambda: 10_000,
                 count_overload: Callable[[str], None] = lambda reason: None,
                 requests_full: Callable[[], bool] = lambda: False,
                 pace_arrivals: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.handler = handler
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.max_headers = max_headers
        self.error_headers = error_headers
        self.count_error = count_error
        self.max_body = max_body
        self.max_connections = max_connections
        self.count_overload = count_overload
        self.requests_full = requests_full
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.reaper = Reaper(self.loop)
        self.arrivals = Arrivals(self.loop) if pace_arrivals else None
        self._gone: asyncio.Event | None = None
        self._body_timeout_answer: PrebuiltProblem | None = None

    def body_timeout_answer(self) -> PrebuiltProblem:
        """The `408` for a body that stopped arriving, with the current error headers (encoded
        again only when a reload changed them)."""
        headers = tuple(self.error_headers().items())
        answer = self._body_timeout_answer
        if answer is None or answer.headers != headers:
            answer = self._body_timeout_answer = PrebuiltProblem(
                408, "request body not received in time", headers)
        return answer

    def __call__(self) -> Connection:
        return Connection(self)

    def connection_gone(self) -> None:
        if self._gone is not None and not self.connections:
            self._gone.set()

    async def shutdown(self, timeout: float) -> None:
        """Let every connection finish what it is answering (up to `timeout`), then close
        what is left."""
        self._gone = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._gone.wait()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
