"""One upstream of a policy: its targets as the balancer orders them (health.py), their
keep-alive connections, and the capacity bounds on using them.

Requests go through the gateway's own client (upstream_client.py): a keep-alive pool per
target, bounded together by `max_connections`. A WebSocket opens a connection of its own to the
target the balancer chooses (websocket.py), so that however many are open, the connections for
ordinary requests are untouched; the capacity bounds (capacity.py) decide who may take a
connection at all.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from gateway.proxy.capacity import Slots
from gateway.proxy.health import run_checks
from gateway.proxy.upstream_client import KeepAlivePool, keepalive_pools
from gateway.settings.policy import UpstreamSettings


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._targets = settings.targets
        self._cycle = itertools.cycle(range(len(settings.targets)))
        self.keepalive = keepalive_pools(settings)  # in the order of the targets
        self._checks: list[asyncio.Future[None]] = []  # active health checks (health.py)
        self.connections = Slots("upstream connections", settings.max_connections)
        self.websockets = Slots("WebSockets", settings.max_websockets,
                                settings.max_websockets_per_client)
        self.streaming = Slots("streaming request bodies", settings.max_streaming_bodies,
                               settings.max_streaming_bodies_per_client)

    def pools_from_next(self) -> Sequence[KeepAlivePool]:
        """The targets' keep-alive pools the balancer chooses from, the chosen one first (the
        rest are retries): the available ones (health.py) in round-robin order, or by fewest
        connections in use; every target when none is available."""
        pools = self.keepalive
        if len(pools) == 1:
            return pools
        now = time.monotonic()
        start = next(self._cycle)
        ordered = [*pools[start:], *pools[:start]]
        available = [p for p in ordered if p.health.available(now)] or ordered
        if self.settings.balance == "least_connections":
            available.sort(key=lambda p: p.busy)  # stable: round robin among equals
        return available

    def start(self) -> None:
        """Active health checks, one task per target (idempotent: a kept pool runs on)."""
        check = self.settings.health
        if check is None or self._checks:
            return
        for pool in self.keepalive:
            self._checks.append(asyncio.ensure_future(
                run_checks(pool.target, pool.health, check, pool.ssl_context)))

    async def reachable(self) -> str | None:
        """None when some target accepts a TCP connection (with active health checks: some
        target is up), else why none does."""
        if self.settings.health is not None:
            if any(not p.health.down for p in self.keepalive):
                return None
            return "every target fails its health checks"
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
        for task in self._checks:
            task.cancel()
        self._checks.clear()
        for pool in self.keepalive:
            pool.close()
