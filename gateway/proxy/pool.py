"""The upstream of a policy: its targets in round-robin order, their keep-alive connections,
and the capacity bounds on using them.

Ordinary requests go through the gateway's own client (upstream_client.py): a keep-alive pool
per target, bounded together by `max_connections`. WebSockets still use an aiohttp
ClientSession of their own, configured as a proxy needs it (no decompression, no auto-added
headers, no cookie jar, no environment proxies, timeouts from the policy), so that however
many are open, the connections for ordinary requests are untouched; the capacity bounds
(capacity.py) decide who may take a connection at all.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import aiohttp

from gateway.proxy.capacity import Slots
from gateway.proxy.upstream_client import KeepAlivePool, keepalive_pools
from gateway.settings.policy import UpstreamSettings, UpstreamTarget

# Headers aiohttp would otherwise invent for the upstream request.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._targets = settings.targets
        self._cycle = itertools.cycle(range(len(settings.targets)))
        self.keepalive = keepalive_pools(settings)  # in the order of the targets
        self.connections = Slots("upstream connections", settings.max_connections)
        self.websockets = Slots("WebSockets", settings.max_websockets,
                                settings.max_websockets_per_client)
        self.streaming = Slots("streaming request bodies", settings.max_streaming_bodies,
                               settings.max_streaming_bodies_per_client)
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

    def pools_from_next(self) -> Sequence[KeepAlivePool]:
        """The targets' keep-alive pools, starting with the next one in round-robin order
        (the rest are retries)."""
        pools = self.keepalive
        if len(pools) == 1:
            return pools
        start = next(self._cycle)
        return [*pools[start:], *pools[:start]]

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
        for pool in self.keepalive:
            pool.close()
        await self.ws_session.close()
