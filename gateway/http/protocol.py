"""The connection layer: aiohttp's request handler, hardened for a gateway.

aiohttp gives no header-read timeout (a client can trickle a request head for about an hour)
and answers parse errors with text bodies that echo the input. This subclass adds:

- a deadline for each request head (`timeouts.header`), armed when the connection opens and
  when the first byte of each following request arrives; keep-alive idleness between requests
  is aiohttp's keepalive timeout (`timeouts.idle`);
- the gateway's own problem+json for requests the parser refuses: 414 for an over-long request
  line, 431 for an over-long header line or too many headers, 400 otherwise.

It relies on aiohttp 3.14's RequestHandler internals (`_messages`, `handle_error`), which is why
pyproject pins aiohttp to that minor version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from gateway.http.problem import problem_response

log = logging.getLogger("gateway.http")


class GatewayRequestHandler(RequestHandler):
    def __init__(self, manager: web.Server, *, header_timeout: float,
                 error_headers: Callable[[], CIMultiDict[str]],
                 count_error: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._error_headers = error_headers
        self._count_error = count_error
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None
        self._line_bytes = 0  # bytes of the current request line seen so far
        self._line_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._line_bytes = 0
        self._line_done = False
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.info("closing connection: request head not received within %ss",
                 self._header_timeout)
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        # aiohttp calls data_received(b"") itself when it resumes reading a body, and bytes
        # arriving while a request is handled are pipelined: neither starts a new head.
        if (
            data
            and self._head_timer is None
            and not self._request_in_progress
            and not self._upgraded
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
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._disarm_head_timer()
            self._last_payload = self._messages[-1][1]

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is out: only an incomplete message can tell the truth.
            raise ConnectionError("response already started; closing the connection")
        if isinstance(exc, LineTooLong):
            if not self._line_done or self._line_bytes > self.max_line_size:
                status, detail = 414, "request line too long"
            else:
                status, detail = 431, "a request header line is too long"
        elif exc is not None and "Too many headers" in str(exc):
            status, detail = 431, "too many request headers"
        elif status == 400:
            detail = "malformed HTTP request"
        else:
            log.error("unhandled error in request handler", exc_info=exc)
            status, detail = 500, "internal gateway error"
        self._count_error(status)
        return problem_response(status, detail, headers=self._error_headers(), close=True)


class GatewayServer(web.Server):
    """aiohttp's low-level server, making GatewayRequestHandler connections.

    `error_headers` gives the headers for answers to unparsable requests (the default
    security headers of the running policy).
    """

    def __init__(self, handler: Any, *, header_timeout: float,
                 error_headers: Callable[[], CIMultiDict[str]],
                 count_error: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        self._error_headers = error_headers
        self._count_error = count_error

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                     error_headers=self._error_headers,
                                     count_error=self._count_error, **self._kwargs)
