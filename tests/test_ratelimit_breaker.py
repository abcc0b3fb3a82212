"""The limiter's circuit breaker against a real Redis that stalls (SIGSTOP): it opens after
three failures, a probe after the cool-down closes it again, and a probe whose request is
cancelled (the client went away; aiohttp cancels the handler) does not leave it open for
good."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.limiter import Limiter
from gateway.settings.ratelimit import RateLimitPolicy, RedisSettings
from tests.support.redis_server import start_redis

# Redis deadlines of 50-200 ms asserted to the tens of milliseconds: alone (tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

POLICY = RateLimitPolicy(name="p", limit=100, period_ms=60_000)


def test_a_cancelled_probe_leaves_the_next_request_to_probe(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")

    async def main() -> None:
        limiter = Limiter(RedisSettings(url=server.url, timeout=0.05, failure_mode="open"))
        checks = Checks([(POLICY, "gw:{ip=10.0.0.1}:p:s60000")])
        breaker = limiter.breaker
        try:
            assert (await limiter.decide(checks)).source == "redis"
            server.pause()
            sources = [(await limiter.decide(checks)).source for _ in range(4)]
            assert sources == ["fallback"] * 4 and breaker.failures == 3  # open: not asked
            breaker.open_until = 0.0  # the cool-down is over: the next request probes
            probe = asyncio.ensure_future(limiter.decide(checks))
            while not breaker.probing:  # the probe is waiting on the stalled Redis
                await asyncio.sleep(0)
            assert (await limiter.decide(checks)).source == "fallback"  # one probe at a time
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            server.resume()
            assert (await limiter.decide(checks)).source == "redis"  # probed again, closed
            assert breaker.failures == 0
        finally:
            server.resume()
            await limiter.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        server.stop()
