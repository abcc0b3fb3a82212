"""A fallback that divides: gateways announce themselves in Redis (a heartbeat), so each knows
how many replicas share its counters; while Redis is away in `failure_mode: open`, each
enforces ceil(limit / replicas) in-process (`redis.fallback: divide`, the default) instead of
the whole limit each (`full`, the old behaviour: N replicas admit up to N times the limit).

Three real gateways share one real redis-server (global limit 20 per hour); Redis is killed;
a burst of 3x the limit is spread over the three: at most limit + 3 are admitted with
`divide` (7 each: 21), all 60 with `full`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.ratelimit.limiter import divided
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.metrics import redis_errors, value
from tests.support.processes import Gateway, eventually, start_gateway, stop, wait_until
from tests.support.redis_server import start_redis
from tests.test_ratelimit_recovery import ROUTES, get_all, spread_burst

LIMIT = 20
REPLICAS = "gateway_ratelimit_replicas"


def gateway(tmp_path: Path, upstream_url: str, redis_url: str, prefix: str,
            fallback: str | None, server_extra: str = "") -> Gateway:
    extra = f", fallback: {fallback}" if fallback else ""
    return start_gateway(
        tmp_path, upstream_url, routes=ROUTES, server_extra=server_extra,
        top_extra=f"redis: {{url: \"{redis_url}\", timeout: 100ms, failure_mode: open, "
                  f"key_prefix: \"{prefix}\"{extra}}}\n"
                  "rate_limits:\n"
                  "  warm: {limit: 1000000, per: 1h, key: global}\n"
                  f"  limited: {{limit: {LIMIT}, per: 1h, key: global}}\n")


def outage_burst(tmp_path: Path, upstream_url: str, count: int, fallback: str | None
                 ) -> tuple[int, list[float], list[str]]:
    """`count` gateways on one Redis; once each has seen all of them, Redis is killed and
    3x the limit is sent over them at once. (admitted, replicas seen, logs)."""
    server = start_redis(tmp_path / "redis")
    prefix = f"gwdiv{count}{fallback}:"
    gateways = [gateway(tmp_path, upstream_url, server.url, prefix, fallback)
                for _ in range(count)]
    try:
        # readiness: every gateway has seen the others' heartbeats
        wait_until(lambda: all(value(gw, REPLICAS) == count for gw in gateways), timeout=10)
        seen = [value(gw, REPLICAS) for gw in gateways]
        shown = json.loads(urllib.request.urlopen(gateways[0].admin_url + "/config",
                                                  timeout=5).read())["rate_limits"]
        assert shown["replicas"] == count and shown["fallback"] == (fallback or "divide")
        assert asyncio.run(get_all([gw.url + "/warm" for gw in gateways])) == [200] * count
        server.kill()
        statuses = asyncio.run(spread_burst([gw.url + "/limited" for gw in gateways],
                                            3 * LIMIT))
        assert all(redis_errors(gw) >= 1 for gw in gateways)  # decided without Redis
        logs = [gw.log_text() for gw in gateways]
    finally:
        for gw in gateways:
            stop(gw.proc)
        server.stop()
    assert sorted(set(statuses)) <= [200, 429]
    admitted = statuses.count(200)
    print(f"\n[fallback {fallback or 'default'}] {count} gateways, Redis killed, burst of "
          f"{3 * LIMIT}: admitted {admitted} (limit {LIMIT}), replicas seen {seen}")
    return admitted, seen, logs


def test_three_replicas_divide_the_limit_while_redis_is_away(tmp_path, upstream) -> None:
    admitted, _, logs = outage_burst(tmp_path, upstream.url, 3, None)
    assert admitted <= LIMIT + 3
    assert admitted == 3 * -(-LIMIT // 3)  # each enforces ceil(20 / 3) = 7
    assert all("3 gateway replicas share the rate-limit counters" in log for log in logs)


def test_fallback_full_keeps_the_whole_limit_per_replica(tmp_path, upstream) -> None:
    admitted, _, _ = outage_burst(tmp_path, upstream.url, 3, "full")
    assert admitted > LIMIT + 3
    assert admitted == 3 * LIMIT


def test_a_single_replica_falls_back_to_the_whole_limit(tmp_path, upstream) -> None:
    admitted, seen, _ = outage_burst(tmp_path, upstream.url, 1, None)
    assert seen == [1]
    assert admitted == LIMIT


@pytest.mark.parametrize("algorithm, burst", [("sliding_window", None),
                                              ("fixed_window", None),
                                              ("token_bucket", None), ("token_bucket", 50)])
def test_divided_limits(algorithm: str, burst: int | None) -> None:
    policy = RateLimitPolicy(name="p", limit=20, period_ms=60_000, algorithm=algorithm,
                             burst=burst)
    ((one, key),) = divided(((policy, "k"),), 3)
    assert key == "k" and one.name == "p" and one.algorithm == algorithm
    assert one.limit == 7
    assert one.capacity == (17 if burst else 7)
    assert divided(((policy, "k"),), 1) == ((policy, "k"),)


def test_a_stopped_gateway_leaves_the_replica_set(tmp_path, upstream) -> None:
    """On shutdown a gateway removes its entry (ZREM), so the others count one fewer at their
    next heartbeat (2 s) rather than after the 7 s an entry takes to go stale."""
    server = start_redis(tmp_path / "redis")
    prefix = "gwleave:"
    gateways = [gateway(tmp_path, upstream.url, server.url, prefix, None) for _ in range(2)]
    try:
        wait_until(lambda: all(value(gw, REPLICAS) == 2 for gw in gateways), timeout=10)
        assert server.command("ZCARD", prefix + "replicas") == b":2\r\n"
        assert stop(gateways[1].proc) == 0
        assert server.command("ZCARD", prefix + "replicas") == b":1\r\n"
        wait_until(lambda: value(gateways[0], REPLICAS) == 1, timeout=4)
        log = gateways[0].log_text()
    finally:
        for gw in gateways:
            stop(gw.proc)
        server.stop()
    assert "rate limits: 1 gateway replica shares the rate-limit counters" in log


def test_a_reload_that_replaces_the_limiter_keeps_this_replica_counted(
    tmp_path, upstream
) -> None:
    """A reload with other `redis` settings makes a new limiter: it starts announcing at once
    (before any request), so when the old one closes after the grace period and leaves, this
    process is still in the set."""
    server = start_redis(tmp_path / "redis")
    prefix = "gwreload:"
    gw = gateway(tmp_path, upstream.url, server.url, prefix, None,
                 server_extra="timeouts: {shutdown: 1s}")
    try:
        wait_until(lambda: value(gw, REPLICAS) == 1, timeout=10)
        text = gw.config.read_text()
        assert f'key_prefix: "{prefix}"}}' in text
        gw.config.write_text(text.replace(f'key_prefix: "{prefix}"}}',
                                          f'key_prefix: "{prefix}", fallback: full}}'))
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "whole limits in-process" in gw.log_text(), timeout=5)
        time.sleep(1.5)  # the old limiter closes after `timeouts.shutdown` (1 s)
        assert server.command("ZCARD", prefix + "replicas") == b":1\r\n"
        wait_until(lambda: value(gw, REPLICAS) == 1, timeout=4)  # the next heartbeat
    finally:
        stop(gw.proc)
        server.stop()


def test_each_worker_is_a_replica(tmp_path, upstream) -> None:
    """With `--workers 2` each worker is a process with its own Redis connection: two
    replicas in the set."""
    server = start_redis(tmp_path / "redis")
    prefix = "gwworkers:"
    gw = start_gateway(
        tmp_path, upstream.url, routes=ROUTES, args=("--workers", "2"),
        top_extra=f"redis: {{url: \"{server.url}\", timeout: 100ms, key_prefix: \"{prefix}\"}}\n"
                  "rate_limits:\n"
                  "  warm: {limit: 1000000, per: 1h, key: global}\n"
                  f"  limited: {{limit: {LIMIT}, per: 1h, key: global}}\n")
    try:
        assert eventually(lambda: server.command("ZCARD", prefix + "replicas") == b":2\r\n",
                          timeout=10), "two workers, not two replicas in Redis"
        assert eventually(lambda: value(gw, REPLICAS) == 2, timeout=10), \
            f"the workers count {value(gw, REPLICAS)} replicas, not 2"
    finally:
        stop(gw.proc)
        server.stop()
