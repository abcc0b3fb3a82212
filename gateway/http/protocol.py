"""The connection layer: aiohttp's request handler, hardened for a gateway.

aiohttp gives no header-read timeout (a client can trickle a request head for about an hour)
and answers parse errors with text bodies that echo the input. This subclass adds:

- a deadline for each request head (`timeouts.header`), armed when the connection opens and
  when the first byte of each following request arrives, pipelined behind a request still
  being answered or not; keep-alive idleness between requests is aiohttp's keepalive timeout
  (`timeouts.idle`);
- nothing carries from one message into the next: aiohttp's C parser keeps a chunked body's
  last trailer field pending and adds it to the *next* request's headers (a trailer
  `Cookie: ...` became a header of the following request). A request with a chunked body
  therefore ends its connection: requests pipelined behind it are dropped unparsed and its
  answer says `Connection: close` (the handler's side);
- request bodies bounded in the bytes they take on the wire, not only in their decoded size:
  chunk extensions and chunk framing count too (a 1-byte body wrapped in 256 KiB of chunk
  extensions is a 413), at most twice `limits.max_body_size` plus 64 KiB;
- a response that ends the connection while the request body is unread (413, 408, ...)
  half-closes it (RFC 9112 9.6): the client sees the end at once, while the rest of its body is
  still read and dropped for a while, so that its unread bytes cannot reset the answer away;
- WebSocket frames from the client must be masked (RFC 6455 5.1): an unmasked frame closes the
  connection with 1002 before it reaches the relay;
- the gateway's own problem+json for requests the parser refuses: 414 for an over-long request
  line, 431 for an over-long header line or too many headers, 400 otherwise, each with an
  `X-Request-ID` and the default security headers, naming no software.

It also sends the interim `100 Continue` the handler decides on (`send_100_continue`): the
handler writes no bytes to the connection itself.

It relies on aiohttp 3.14's RequestHandler internals (the queue of parsed requests,
`handle_error`, ...), reached only through http/aiohttp_internals.py, which lists them and says
why pyproject pins aiohttp to that minor version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from gateway.http.aiohttp_internals import (
    HandlerInternals,
    ServerInternals,
    parse_error_kind,
    response_started,
    unread_chunks,
    write_interim,
)
from gateway.http.problem import problem_bytes, problem_response
from gateway.http.ws_frames import MaskCheck
from gateway.loop_turns import after_turns

log = logging.getLogger("gateway.http")


class RequestBodyFlood(Exception):
    """The body took more bytes on the wire than its size limit allows (chunk extensions)."""


_CLOSE_PROTOCOL_ERROR = b"\x88\x02\x03\xea"  # a close frame, code 1002, unmasked (server)
REFUSED_LINGER = 1.0  # seconds a connection refused at connect is drained before it closes
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def send_100_continue(request: web.BaseRequest) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body (RFC 9110 10.1.1).
    The final answer still counts as not started: it can be any answer, an error included."""
    await write_interim(request, _CONTINUE)


class GatewayRequestHandler(HandlerInternals):
    def __init__(self, manager: web.Server, *, header_timeout: float,
                 error_headers: Callable[[], CIMultiDict[str]],
                 count_error: Callable[[int], None],
                 max_body: Callable[[], int] = lambda: 10 * 1024 * 1024,
                 max_connections: Callable[[], int] = lambda: 10_000,
                 count_overload: Callable[[str], None] = lambda reason: None,
                 requests_full: Callable[[], bool] = lambda: False,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._error_headers = error_headers
        self._count_error = count_error
        self._max_body = max_body
        self._max_connections = max_connections
        self._count_overload = count_overload
        self._body_wire_bytes = 0  # bytes received while the last request's body was open
        self._answered: Any = None  # the payload of the last request answered
        self._ws_frames: MaskCheck | None = None  # set once a WebSocket is accepted
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None
        self._line_bytes = 0  # bytes of the current request line seen so far
        self._line_done = False
        self._ends_after: Any = None  # the chunked request's payload; nothing parsed after it
        self._requests_full = requests_full
        self._refused: asyncio.BaseTransport | None = None  # answered 503 at connect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a refused connection is never added to the server's open connections
        if self.server_connection_count() >= self._max_connections():
            self._refuse(transport, "connections",
                         "the gateway is at its connection limit; retry shortly")
            return
        if self._requests_full():
            # its request would be refused by the handler anyway: answered here, before any
            # parsing, which is what keeps an overloaded worker serving what it admitted
            self._refuse(transport, "requests",
                         "the gateway is at its limit of requests in progress; retry shortly")
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, detail: str) -> None:
        """Answer 503 at once without reading anything, then half-close: a request the client
        already sent is read and dropped until it closes (or REFUSED_LINGER passes), so that
        its unread bytes cannot reset the answer away."""
        self._count_overload(reason)
        self._count_error(503)
        self._refused = transport
        out = self._error_headers()
        out["Retry-After"] = "1"
        tcp = cast(asyncio.Transport, transport)
        tcp.write(problem_bytes(503, detail, out))
        if tcp.can_write_eof():
            tcp.write_eof()
        self.event_loop.call_later(REFUSED_LINGER, tcp.close)

    def eof_received(self) -> bool | None:
        if self._refused is not None:
            return None  # the client is done: the transport closes
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is not None:
            self._refused = None  # never served: nothing of aiohttp's to release
            return
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._line_bytes = 0
        self._line_done = False
        self._head_timer = self.event_loop.call_later(self._header_timeout, self._head_timer_fired)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timer_fired(self) -> None:
        # bytes that arrived while the loop was busy are read in its next poll: confirm the
        # silence after it (gateway/loop_turns.py), unless the head completes meanwhile
        fired = self._head_timer
        after_turns(self.event_loop, 2,
                    lambda: self._head_timer is fired and self._head_timed_out())

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.info("closing connection: request head not received within %ss",
                 self._header_timeout)
        if self.answering:
            # the head was pipelined behind a request still being answered: that answer
            # completes, then the connection closes with the partial head unread
            self.close()
            return
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # answered at connect (_refuse): dropped
        # aiohttp calls data_received(b"") itself when it resumes reading a body; bytes that
        # arrive once the last request's body is complete begin the next head, whether or
        # not that request is still being answered.
        if (
            data
            and self._head_timer is None
            and not self.is_upgraded
            and self._ends_after is None
            and (self._last_payload is None or self._last_payload.is_eof())
        ):
            self._arm_head_timer()
        if self._head_timer is not None and not self._line_done:
            newline = data.find(b"\n")
            if newline < 0:
                self._line_bytes += len(data)
            else:
                self._line_bytes += newline
                self._line_done = True
        if self._ws_frames is not None:
            if data and not self._ws_frames.feed(data):
                log.info("closing WebSocket: unmasked frame from the client (RFC 6455 5.1)")
                if self.transport is not None:
                    self.transport.write(_CLOSE_PROTOCOL_ERROR)
                    self.transport.close()
                return
            super().data_received(data)
            return
        body_open = self._last_payload is not None and not self._last_payload.is_eof()
        messages = self.parsed_messages
        queued = len(messages)
        super().data_received(data)
        if body_open:
            self._body_wire_bytes += len(data)
            payload = self._last_payload
            # not once it is answered: a body drained after the answer (lingering) ends by
            # time, and an exception there would be logged as unhandled
            if self._body_wire_bytes > 2 * self._max_body() + 65536 and not payload.is_eof() \
                    and payload is not self._answered:
                payload.set_exception(RequestBodyFlood("request body framing exceeds the "
                                                       "size limit"))
        if len(messages) > queued:
            self._body_wire_bytes = 0
            self._disarm_head_timer()
            if self._ends_after is None:
                self._stop_after_chunked(queued)
            else:  # parsed behind a chunked request: dropped, never handled
                while len(messages) > queued:
                    messages.pop()
            self._last_payload = messages[-1][1] if messages else None
            if self._ends_after is None and _head_follows(data, self._last_payload):
                self._arm_head_timer()  # a pipelined head began in the same bytes
        if self._ends_after is not None and self._ends_after.is_eof():
            self.close()  # its answer completes; nothing after it is read

    def set_parser(self, parser: Any, *args: Any, **kwargs: Any) -> None:
        # aiohttp installs the WebSocket reader here (the 101 is being sent) and feeds it what
        # arrived since the handshake; from now on every frame's mask bit is checked
        self._ws_frames = MaskCheck()
        if self.upgrade_tail and not self._ws_frames.feed(self.upgrade_tail):
            self.upgrade_tail = b""
            if self.transport is not None:
                self.transport.write(_CLOSE_PROTOCOL_ERROR)
                self.transport.close()
        super().set_parser(parser, *args, **kwargs)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._answered = request.content
        transport = self.transport
        if not resp.keep_alive and not request.content.is_eof() and transport is not None \
                and not self.is_upgraded and transport.can_write_eof():
            transport.write_eof()  # the answer is whole; its unread body is drained after
        return result

    def _stop_after_chunked(self, first_new: int) -> None:
        messages = self.parsed_messages
        for index in range(first_new, len(messages)):
            message, payload = messages[index]
            if getattr(message, "chunked", False):
                self._ends_after = payload
                while len(messages) > index + 1:
                    messages.pop()
                return

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if response_started(request):
            # Part of a response is out: only an incomplete message can tell the truth.
            raise ConnectionError("response already started; closing the connection")
        kind = parse_error_kind(exc)
        if kind == "line_too_long":
            if not self._line_done or self._line_bytes > self.max_line_size:
                status, detail = 414, "request line too long"
            else:
                status, detail = 431, "a request header line is too long"
        elif kind == "too_many_headers":
            status, detail = 431, "too many request headers"
        elif kind == "bad_version":
            status, detail = 505, "only HTTP/1.0 and HTTP/1.1 are supported"
        elif status == 400:
            detail = "malformed HTTP request"
        else:
            log.error("unhandled error in request handler", exc_info=exc)
            status, detail = 500, "internal gateway error"
        self._count_error(status)
        response = problem_response(status, detail, request_id=str(uuid.uuid4()),
                                    headers=self._error_headers(), close=True)
        response.own_version = True  # the request's version was never learned
        return response


def _head_follows(data: bytes, payload: Any) -> bool:
    """Whether `data`, which completed a request, goes on past it: the start of a pipelined
    head. The request's last bytes are its head's blank line, or the last piece of its body
    (still buffered: the handler has not run yet)."""
    if payload is None or not payload.is_eof():
        return False
    buffered = unread_chunks(payload)
    return not data.endswith(buffered[-1] if buffered else b"\r\n\r\n")


class GatewayServer(ServerInternals):
    """aiohttp's low-level server, making GatewayRequestHandler connections.

    `error_headers` gives the headers for answers to unparsable requests (the default
    security headers of the running policy).
    """

    def __init__(self, handler: Any, *, header_timeout: float,
                 error_headers: Callable[[], CIMultiDict[str]],
                 count_error: Callable[[int], None],
                 max_body: Callable[[], int] = lambda: 10 * 1024 * 1024,
                 max_connections: Callable[[], int] = lambda: 10_000,
                 count_overload: Callable[[str], None] = lambda reason: None,
                 requests_full: Callable[[], bool] = lambda: False,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._requests_full = requests_full
        self._header_timeout = header_timeout
        self._error_headers = error_headers
        self._count_error = count_error
        self._max_body = max_body
        self._max_connections = max_connections
        self._count_overload = count_overload

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self.event_loop,
                                     header_timeout=self._header_timeout,
                                     error_headers=self._error_headers,
                                     count_error=self._count_error, max_body=self._max_body,
                                     max_connections=self._max_connections,
                                     count_overload=self._count_overload,
                                     requests_full=self._requests_full,
                                     **self.handler_kwargs)
