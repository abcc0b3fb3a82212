"""The upstream connection pool: one shared aiohttp ClientSession per policy's upstream.

The session is configured as a proxy needs it, not as an API client wants it: no
decompression, no auto-added headers, no cookie jar, no environment proxies, timeouts and
pool size from the policy.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from gateway.config.model import UpstreamSettings, UpstreamTarget

# Headers aiohttp would otherwise invent for the upstream request.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._targets = settings.targets
        self._cycle = itertools.cycle(range(len(settings.targets)))
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=10,
        )
        self.session = aiohttp.ClientSession(
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
