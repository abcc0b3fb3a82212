"""The upstream connection pool: one shared aiohttp ClientSession per policy's upstream.

The session is configured as a proxy needs it, not as an API client wants it: no
decompression, no auto-added headers, no cookie jar, no environment proxies, timeouts and
pool size from the policy. WebSockets get a session of their own, so that however many are
open, the pool for ordinary requests is untouched; the capacity bounds (capacity.py) decide
who may take a connection at all.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from gateway.proxy.capacity import Slots
from gateway.settings.policy import UpstreamSettings, UpstreamTarget

# Headers aiohttp would otherwise invent for the upstream request.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._targets = settings.targets
        self._cycle = itertools.cycle(range(len(settings.targets)))
        self.connections = Slots("upstream connections", settings.max_connections)
        self.websockets = Slots("WebSockets", settings.max_websockets,
                                settings.max_websockets_per_client)
        self.streaming = Slots("streaming request bodies", settings.max_streaming_bodies,
                               settings.max_streaming_bodies_per_client)
        self.session = self._session(settings, settings.max_connections)
        self.ws_session = self._session(settings, max(1, settings.max_websockets))

    @staticmethod
    def _session(settings: UpstreamSettings, size: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=size,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=10,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            requote_redirect_url=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
        )

    def targets_from_next(self) -> list[UpstreamTarget]:
        """All targets, starting with the next one in round-robin order (the rest are retries)."""
        start = next(self._cycle)
        return [*self._targets[start:], *self._targets[:start]]

    async def reachable(self) -> str | None:
        """None when some target accepts a TCP connection, else why none does."""
        last = "no upstream targets"
        for target in self._targets:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port),
                    self.settings.connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                last = f"upstream {target.base_url} unreachable: {exc.__class__.__name__}"
                continue
            writer.close()
            return None
        return last

    async def close(self) -> None:
        await self.session.close()
        await self.ws_session.close()
