"""Responses that carry only the headers someone chose.

aiohttp's StreamResponse adds `Server: Python/x aiohttp/y` and a default
`Content-Type: application/octet-stream` when they are missing. The gateway must invent
neither: the first leaks its software and version, the second changes how a browser treats an
upstream's body. The relayed upstream responses, the gateway's own answers and its `101` to a
WebSocket handshake all use these.

aiohttp also echoes the request's version in the status line (`HTTP/2.0 505 ...` to an
`HTTP/2.0` request line); an answer to a version the gateway refuses is sent as HTTP/1.1, the
version this server speaks (RFC 9110 6.2), and ends the connection.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11


class _NoInventedHeaders(web.StreamResponse):
    # answer as HTTP/1.1 whatever the request said (set for requests the parser refused)
    own_version = False

    async def _prepare_headers(self) -> None:
        had_server = hdrs.SERVER in self._headers
        had_type = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not had_server:
            self._headers.popall(hdrs.SERVER, None)
        if not had_type:
            self._headers.popall(hdrs.CONTENT_TYPE, None)

    async def _write_headers(self) -> None:
        request = self._req
        assert request is not None
        if request.version in (HttpVersion11, HttpVersion10) and not self.own_version:
            await super()._write_headers()
            return
        writer = self._payload_writer
        assert writer is not None
        self._headers[hdrs.CONNECTION] = "close"
        await writer.write_headers(f"HTTP/1.1 {self._status} {self._reason}", self._headers)
        writer.send_headers()


class RelayedResponse(_NoInventedHeaders):
    """An upstream response streamed to the client."""


class GatewayResponse(_NoInventedHeaders, web.Response):
    """A complete response the gateway writes itself."""


class GatewayWebSocketResponse(_NoInventedHeaders, web.WebSocketResponse):
    """The client side of a relayed WebSocket: its `101` names no software."""
