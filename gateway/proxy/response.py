"""A StreamResponse that carries the upstream's headers as they were.

aiohttp's StreamResponse adds `Server: Python/x aiohttp/y` and a default
`Content-Type: application/octet-stream` when they are missing. A proxy must not invent either
(the first leaks the gateway's software, the second changes how a browser treats the body).
"""

from __future__ import annotations

from aiohttp import hdrs, web


class RelayedResponse(web.StreamResponse):
    async def _prepare_headers(self) -> None:
        had_server = hdrs.SERVER in self._headers
        had_type = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not had_server:
            self._headers.popall(hdrs.SERVER, None)
        if not had_type:
            self._headers.popall(hdrs.CONTENT_TYPE, None)
