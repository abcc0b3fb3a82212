"""Responses that carry only the headers someone chose.

aiohttp's StreamResponse adds `Server: Python/x aiohttp/y` and a default
`Content-Type: application/octet-stream` when they are missing. The gateway must invent
neither: the first leaks its software and version, the second changes how a browser treats an
upstream's body. The relayed upstream responses, the gateway's own answers and its `101` to a
WebSocket handshake all use these.

aiohttp also echoes the request's version in the status line (`HTTP/2.0 505 ...` to an
`HTTP/2.0` request line); an answer to a version the gateway refuses is sent as HTTP/1.1, the
version this server speaks (RFC 9110 6.2), and ends the connection.

Both are hooks of `ResponseHooks` (http/aiohttp_internals.py), which owns the overrides of
aiohttp's private header steps.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11

from gateway.http.aiohttp_internals import ResponseHooks


class _NoInventedHeaders(ResponseHooks):
    # answer as HTTP/1.1 whatever the request said (set for requests the parser refused)
    own_version = False

    def before_default_headers(self) -> tuple[bool, bool]:
        return hdrs.SERVER in self.headers, hdrs.CONTENT_TYPE in self.headers

    def after_default_headers(self, before: Any) -> None:
        had_server, had_type = before
        if not had_server:
            self.headers.popall(hdrs.SERVER, None)
        if not had_type:
            self.headers.popall(hdrs.CONTENT_TYPE, None)

    def status_line(self, version: Any) -> str | None:
        if version in (HttpVersion11, HttpVersion10) and not self.own_version:
            return None
        self.headers[hdrs.CONNECTION] = "close"
        return f"HTTP/1.1 {self.status} {self.reason}"


class RelayedResponse(_NoInventedHeaders):
    """An upstream response streamed to the client."""


class GatewayResponse(_NoInventedHeaders, web.Response):
    """A complete response the gateway writes itself."""


class GatewayWebSocketResponse(_NoInventedHeaders, web.WebSocketResponse):
    """The client side of a relayed WebSocket: its `101` names no software."""
