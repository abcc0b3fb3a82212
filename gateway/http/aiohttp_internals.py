"""Every part of aiohttp the gateway uses that is not aiohttp's public API, in one place.

The connection layer (http/protocol.py), the responses (http/response.py) and the server
(server.py) reach aiohttp's private state only through the names below; no other module of
the gateway touches a private attribute or method of an aiohttp object.

    internal              aiohttp class (kind)           what the gateway needs it for -> used via
    --------------------- ------------------------------ -------------------------------------------
    _loop                 web_protocol.RequestHandler    connection timers: the request-head
                          (slot)                         deadline, a refused connection's linger ->
                                                         HandlerInternals.event_loop
    _manager              web_protocol.RequestHandler    the server of a connection, to count its
                          (slot)                         open connections at accept ->
                                                         HandlerInternals.server_connection_count
    _request_in_progress  web_protocol.RequestHandler    a head that times out behind a request
                          (slot)                         being answered lets that answer finish ->
                                                         HandlerInternals.answering
    _upgraded             web_protocol.RequestHandler    bytes after a WebSocket upgrade begin no
                          (slot)                         request head; no half-close after it ->
                                                         HandlerInternals.is_upgraded
    _messages             web_protocol.RequestHandler    parsed requests not yet handled: those
                          (slot)                         behind a chunked request are dropped; a new
                                                         one disarms the head deadline ->
                                                         HandlerInternals.parsed_messages
    _message_tail         web_protocol.RequestHandler    bytes after a WebSocket handshake: their
                          (slot)                         frames' masks are checked before aiohttp's
                                                         reader sees them ->
                                                         HandlerInternals.upgrade_tail
    handle_error          web_protocol.RequestHandler    overridden: the gateway's problem+json
                          (method)                       instead of aiohttp's text answer to an
                                                         unparsable request -> http/protocol.py
    finish_response       web_protocol.RequestHandler    overridden: half-close a connection whose
                          (method)                       answer ends it while its body is unread ->
                                                         http/protocol.py
    set_parser            web_protocol.RequestHandler    overridden: where aiohttp installs the
                          (method)                       WebSocket reader; the mask checks start
                                                         there -> http/protocol.py
    _loop                 web_server.Server (instance    given to each connection the server makes
                          attribute)                     -> ServerInternals.event_loop
    _kwargs               web_server.Server (instance    the RequestHandler options (timeouts,
                          attribute)                     limits) given to each connection ->
                                                         ServerInternals.handler_kwargs
    _connections          web_server.Server (instance    the server's map of open connections
                          attribute)                     (`connections` copies it on every call) ->
                                                         HandlerInternals.server_connection_count
    _buffer               streams.StreamReader (slot)    a body's chunks not read yet: do the bytes
                                                         that completed a request go on into a
                                                         pipelined head? -> unread_chunks
    _prepare_headers      web_response.StreamResponse    overridden: aiohttp adds `Server` and
                          (method)                       `Content-Type` here; the gateway removes
                                                         what it invented ->
                                                         ResponseHooks.before_default_headers,
                                                         after_default_headers
    _write_headers        web_response.StreamResponse    overridden: the status line; `HTTP/1.1` for
                          (method)                       a request whose version was refused ->
                                                         ResponseHooks.status_line
    _req                  web_response.StreamResponse    the request being answered (its version) ->
                          (attribute)                    ResponseHooks
    _payload_writer       web_response.StreamResponse    the writer the chosen status line and
                          (attribute)                    headers go to -> ResponseHooks
    writer                web_request.BaseRequest        undocumented: the connection's writer ->
                          (property)                     response_started, write_interim
    output_size           http_writer.StreamWriter       undocumented: is any byte of the answer out
                          (attribute)                    (then only an incomplete message tells the
                                                         truth)? A `100 Continue` is not counted ->
                                                         response_started, write_interim
    write_headers         http_writer.StreamWriter       undocumented: buffers the chosen status
                          (method)                       line and headers -> ResponseHooks
    send_headers          http_writer.StreamWriter       undocumented: sends them -> ResponseHooks
                          (method)
    aiohttp._http_parser  aiohttp (module)               llhttp, the C parser: the gateway never
                                                         serves with the pure-Python one ->
                                                         has_c_parser, require_c_parser
    Too many headers      http_exceptions.BadHttpMessage the C parser's text for more header fields
                          (message)                      than max_headers: 431 -> parse_error_kind
    Invalid HTTP version  http_exceptions.BadHttpMessage the C parser's text for a version it
                          (message)                      refuses (HTTP/1.2, 2.0, ...): 505 ->
                                                         parse_error_kind

`INTERNALS` below is the same list, read by tests/test_aiohttp_internals.py, which checks each
one on the installed aiohttp and names the attribute and the class when one is gone.

Why pyproject pins aiohttp to 3.14.* (`>=3.14,<3.15`): none of the above is aiohttp's public
API, so any minor release may rename or remove one without a deprecation period, and some
changes would not fail loudly: a renamed `_connections` would switch the connection bound off,
a new text for "Too many headers" would turn a 431 into a 400. Moving to a new aiohttp minor
means: raise the pin, run tests/test_aiohttp_internals.py, fix this module (only this one),
then run the whole suite.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler


@dataclass(frozen=True, slots=True)
class Internal:
    """One private part of aiohttp the gateway depends on (the table above says what for)."""

    name: str
    owner: str  # the aiohttp class (module.Class), or the package for a module
    kind: Literal["slot", "instance attribute", "attribute", "method", "property", "module",
                  "message"]


_RH = "aiohttp.web_protocol.RequestHandler"
_SV = "aiohttp.web_server.Server"
_SR = "aiohttp.web_response.StreamResponse"
_SW = "aiohttp.http_writer.StreamWriter"
_BM = "aiohttp.http_exceptions.BadHttpMessage"

INTERNALS: tuple[Internal, ...] = (
    Internal("_loop", _RH, "slot"),
    Internal("_manager", _RH, "slot"),
    Internal("_request_in_progress", _RH, "slot"),
    Internal("_upgraded", _RH, "slot"),
    Internal("_messages", _RH, "slot"),
    Internal("_message_tail", _RH, "slot"),
    Internal("handle_error", _RH, "method"),
    Internal("finish_response", _RH, "method"),
    Internal("set_parser", _RH, "method"),
    Internal("_loop", _SV, "instance attribute"),
    Internal("_kwargs", _SV, "instance attribute"),
    Internal("_connections", _SV, "instance attribute"),
    Internal("_buffer", "aiohttp.streams.StreamReader", "slot"),
    Internal("_prepare_headers", _SR, "method"),
    Internal("_write_headers", _SR, "method"),
    Internal("_req", _SR, "attribute"),
    Internal("_payload_writer", _SR, "attribute"),
    Internal("writer", "aiohttp.web_request.BaseRequest", "property"),
    Internal("output_size", _SW, "attribute"),
    Internal("write_headers", _SW, "method"),
    Internal("send_headers", _SW, "method"),
    Internal("aiohttp._http_parser", "aiohttp", "module"),
    Internal("Too many headers", _BM, "message"),
    Internal("Invalid HTTP version", _BM, "message"),
)


# ---- the connection: RequestHandler ----------------------------------------------------------

class HandlerInternals(RequestHandler):
    """aiohttp's RequestHandler with the private state the gateway reads, under names of the
    gateway's own (a subclass overrides `handle_error`, `finish_response`, `set_parser`)."""

    __slots__ = ()

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def answering(self) -> bool:
        """Whether a request of this connection is being handled now."""
        return self._request_in_progress

    @property
    def is_upgraded(self) -> bool:
        """Whether the connection switched protocols (a WebSocket)."""
        return self._upgraded

    @property
    def parsed_messages(self) -> deque[tuple[RawRequestMessage, Any]]:
        """Requests parsed and not yet handled, oldest first: (head, body StreamReader).
        The deque itself: removing entries drops those requests unhandled."""
        return self._messages

    @property
    def upgrade_tail(self) -> bytes:
        """Bytes received after an upgrade's head, not yet given to the new protocol."""
        return self._message_tail

    @upgrade_tail.setter
    def upgrade_tail(self, value: bytes) -> None:
        self._message_tail = value

    def server_connection_count(self) -> int:
        """Open connections of the server this one belongs to (not counting this one)."""
        return len(getattr(self._manager, "_connections", ()))


class ServerInternals(web.Server):
    """aiohttp's low-level server, with what making a connection of a subclass needs."""

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def handler_kwargs(self) -> dict[str, Any]:
        """The RequestHandler options the server was made with (timeouts, limits, ...)."""
        return self._kwargs


def unread_chunks(payload: Any) -> deque[bytes] | None:
    """The chunks a request body's StreamReader holds and nobody has read yet (None for a
    reader without a buffer, e.g. the empty body)."""
    return getattr(payload, "_buffer", None)


def response_started(request: web.BaseRequest) -> bool:
    """Whether any byte of the answer to `request` is out (a `100 Continue` does not count)."""
    return request.writer.output_size > 0


async def write_interim(request: web.BaseRequest, data: bytes) -> None:
    """Write an interim (1xx) response to the client. It does not count as the start of the
    final answer, which can still be any answer, an error included (`response_started`)."""
    writer = request.writer
    await writer.write(data)
    writer.output_size = 0


ParseError = Literal["line_too_long", "too_many_headers", "bad_version", "other"]


def parse_error_kind(exc: BaseException | None) -> ParseError:
    """What the parser refused, from the exception aiohttp hands to `handle_error`."""
    if isinstance(exc, LineTooLong):
        return "line_too_long"
    if exc is not None and "Too many headers" in str(exc):
        return "too_many_headers"
    if exc is not None and "Invalid HTTP version" in str(exc):
        return "bad_version"
    return "other"


def has_c_parser() -> bool:
    """Whether aiohttp's C parser (llhttp) is importable."""
    try:
        from aiohttp import _http_parser  # noqa: F401
    except ImportError:
        return False
    return True


def require_c_parser() -> None:
    """The pure-Python parser accepts requests llhttp refuses: never serve with it (exits
    with a message saying why). Checked by every serving process and by the supervisor."""
    if not has_c_parser():
        raise SystemExit("gateway: aiohttp's C HTTP parser is not available "
                         "(unset AIOHTTP_NO_EXTENSIONS or reinstall aiohttp)")
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        raise SystemExit("gateway: AIOHTTP_NO_EXTENSIONS is set; the gateway needs the C parser")


# ---- responses: StreamResponse ---------------------------------------------------------------

class ResponseHooks(web.StreamResponse):
    """StreamResponse with its two private header steps turned into hooks a subclass overrides.

    aiohttp's `_prepare_headers` adds default headers (`Server`, `Content-Type`, `Date`,
    `Connection`, ...); `_write_headers` writes the status line with the request's version.
    """

    def before_default_headers(self) -> Any:
        """Called before aiohttp adds its default headers; the result is given to
        `after_default_headers`."""
        return None

    def after_default_headers(self, before: Any) -> None:
        """Called once aiohttp has added its default headers to `self.headers`."""

    def status_line(self, version: Any) -> str | None:
        """The status line to send instead of aiohttp's (which echoes the request's
        `version`), or None for aiohttp's. Headers edited here are sent too."""
        return None

    async def _prepare_headers(self) -> None:
        before = self.before_default_headers()
        await super()._prepare_headers()
        self.after_default_headers(before)

    async def _write_headers(self) -> None:
        request = self._req
        assert request is not None
        line = self.status_line(request.version)
        if line is None:
            await super()._write_headers()
            return
        writer = self._payload_writer
        assert writer is not None
        await writer.write_headers(line, self.headers)
        writer.send_headers()
