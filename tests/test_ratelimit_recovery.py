"""Recovery in the background: while the breaker is open, a background task probes Redis, so
the breaker closes as soon as Redis answers again, with no client request involved; the first
burst after an idle recovery is decided by Redis, exactly.

Two real gateways share one real redis-server (`redis.timeout` 100ms, `failure_mode: open`, a
global limit of 20 per hour). Redis is killed, the gateways see it (their breakers open),
Redis is restarted on the same port, nobody sends anything for 1.5 s, then a burst of 3x the
limit goes to the two gateways at once: exactly 20 are admitted. Before the background probe
the first request of the burst probed Redis while the rest of it took the in-process fallback
(each gateway's own full limit): 37-40 of 60 admitted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.limiter import Limiter
from gateway.settings.ratelimit import RateLimitPolicy, RedisSettings
from tests.support.metrics import redis_errors, redis_successes
from tests.support.processes import Gateway, start_gateway, stop, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.test_ratelimit_faults import window_count

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

LIMIT = 20
IDLE = 1.5  # s with no traffic between Redis answering again and the burst

ROUTES = """\
  - name: warm
    match: {path_prefix: /warm}
    rate_limits: [warm]
  - name: limited
    match: {path_prefix: /limited}
    rate_limits: [limited]
"""


def shared_gateway(tmp_path: Path, upstream_url: str, redis_url: str, prefix: str) -> Gateway:
    return start_gateway(
        tmp_path, upstream_url, routes=ROUTES,
        top_extra=f"redis: {{url: \"{redis_url}\", timeout: 100ms, failure_mode: open, "
                  f"key_prefix: \"{prefix}\"}}\n"
                  "rate_limits:\n"
                  "  warm: {limit: 1000000, per: 1h, key: global}\n"
                  f"  limited: {{limit: {LIMIT}, per: 1h, key: global}}\n")


async def spread_burst(urls: list[str], total: int) -> list[int]:
    """`total` GETs at once, round-robin over `urls`; their statuses."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(url: str) -> int:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status
        return list(await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(total))))


async def get_all(urls: list[str]) -> list[int]:
    return await spread_burst(urls, len(urls))


def test_idle_recovery_then_a_burst_is_decided_by_redis_exactly(tmp_path, upstream) -> None:
    server = start_redis(tmp_path / "redis")
    prefix = "gwrec:"
    gateways = [shared_gateway(tmp_path, upstream.url, server.url, prefix) for _ in range(2)]
    try:
        warm = [gw.url + "/warm" for gw in gateways]
        assert asyncio.run(get_all(warm)) == [200, 200]  # both connected to Redis
        server.kill()
        # the outage is seen: requests (on another limit) fail on Redis, the breakers open
        for _ in range(5):
            assert asyncio.run(get_all(warm)) == [200, 200]
        wait_until(lambda: all(redis_errors(gw) >= 3 for gw in gateways), timeout=5)
        server = RedisServer(server.port, server.workdir, server.extra).start()  # empty
        back = time.monotonic()
        time.sleep(IDLE)  # part of the scenario: nobody sends anything
        statuses = asyncio.run(spread_burst([gw.url + "/limited" for gw in gateways],
                                            3 * LIMIT))
        counted = window_count(server, f"{prefix}{{global}}:limited:s3600000")
        successes = [redis_successes(gw) for gw in gateways]
        logs = [gw.log_text() for gw in gateways]
    finally:
        for gw in gateways:
            stop(gw.proc)
        server.stop()
    admitted = statuses.count(200)
    print(f"\n[recovery] idle {IDLE} s after Redis back (at {back:.1f}), burst of {3 * LIMIT} "
          f"over 2 gateways: admitted {admitted} (limit {LIMIT}), Redis counter {counted}, "
          f"redis-decided calls {successes}")
    assert sorted(set(statuses)) == [200, 429]
    assert admitted == LIMIT, logs
    assert counted == LIMIT
    assert all("is back; rate limits are shared again" in log for log in logs)


POLICY = RateLimitPolicy(name="p", limit=100, period_ms=60_000)


def test_the_breaker_closes_in_the_background_and_the_task_stops_on_close(
    tmp_path: Path
) -> None:
    """No request after the outage: the breaker closes within 1 s of Redis answering again;
    close() ends the background task (nothing left pending on the loop)."""
    server = start_redis(tmp_path / "redis")

    async def main() -> float:
        limiter = Limiter(RedisSettings(url=server.url, timeout=0.05, failure_mode="open"))
        checks = Checks([(POLICY, "gw:{ip=10.0.0.1}:p:s60000")])
        breaker = limiter.breaker
        try:
            assert (await limiter.decide(checks)).source == "redis"
            task = limiter._task  # started by the first decision (`gateway run`: at start)
            assert task is not None and not task.done()
            server.pause()
            sources = [(await limiter.decide(checks)).source for _ in range(4)]
            assert sources == ["fallback"] * 4 and breaker.failures >= 3
            await asyncio.sleep(0.6)  # past the cool-down: still open, nobody asked
            assert breaker.failures >= 3
            server.resume()
            back = asyncio.get_running_loop().time()
            while breaker.failures:
                assert asyncio.get_running_loop().time() - back < 1.0, "not closed within 1 s"
                await asyncio.sleep(0.01)
            closed_after = asyncio.get_running_loop().time() - back
            assert (await limiter.decide(checks)).source == "redis"
        finally:
            server.resume()
            await limiter.close()
        assert task.done()
        left = [t for t in asyncio.all_tasks()
                if t.get_coro().__qualname__ == "Limiter._background"]
        assert left == [], left
        return closed_after

    try:
        closed_after = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        server.stop()
    print(f"\n[background probe] breaker closed {closed_after * 1000:.0f} ms after Redis "
          "answered again, no request involved")
