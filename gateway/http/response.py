"""Responses that carry only the headers someone chose.

aiohttp's StreamResponse adds `Server: Python/x aiohttp/y` and a default
`Content-Type: application/octet-stream` when they are missing. The gateway must invent
neither: the first leaks its software and version, the second changes how a browser treats an
upstream's body. Both the relayed upstream responses and the gateway's own answers use these.
"""

from __future__ import annotations

from aiohttp import hdrs, web


class _NoInventedHeaders(web.StreamResponse):
    async def _prepare_headers(self) -> None:
        had_server = hdrs.SERVER in self._headers
        had_type = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not had_server:
            self._headers.popall(hdrs.SERVER, None)
        if not had_type:
            self._headers.popall(hdrs.CONTENT_TYPE, None)


class RelayedResponse(_NoInventedHeaders):
    """An upstream response streamed to the client."""


class GatewayResponse(_NoInventedHeaders, web.Response):
    """A complete response the gateway writes itself."""
