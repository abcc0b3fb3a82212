"""Rate limits through real gateway processes and a real Redis (one server, then a 3-node
cluster): exact across replicas, the shipped limits end to end, and client keys that a
spoofed X-Forwarded-For cannot change."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import request
from tests.support.metrics import metrics_text
from tests.support.processes import (
    ROOT,
    Gateway,
    run_policy_file,
    run_shipped,
    start_gateway,
    stop,
    wait_until,
)
from tests.support.redis_cluster import RedisCluster, start_redis_cluster
from tests.support.redis_server import RedisServer, start_redis

ALGOS = ["sliding_window", "fixed_window", "token_bucket"]
LIMITS = [5, 100, 1000]

# The tests share the module's Redis servers and gateways (a 3-node cluster and a pair of
# replicas take a while to start): one worker runs them all, about a minute, started early.
pytestmark = [pytest.mark.xdist_group("ratelimit-gateway"), pytest.mark.slow]


@pytest.fixture(scope="module")
def redis_standalone(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def redis_server(request) -> RedisServer | RedisCluster:
    """The Redis a test's gateways use: one server, then a 3-node cluster (same `.url`, and
    `.command` runs on every node of the cluster, so FLUSHALL empties all of it)."""
    return request.getfixturevalue(f"redis_{request.param}")


async def burst(urls: list[str], total: int, concurrency: int = 48) -> list[int]:
    """`total` GETs spread over `urls`, `concurrency` at a time; the statuses."""
    statuses: list[int] = []
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for i in counter:
                async with session.get(urls[i % len(urls)]) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def limited_gateway(tmp_path: Path, upstream_url: str, limit_yaml: str, redis_url: str = "",
                    routes_limits: str = "[shared]", **kwargs) -> Gateway:
    return start_gateway(
        tmp_path, upstream_url,
        routes=f"  - name: all\n    match: {{path_prefix: /}}\n    rate_limits: {routes_limits}",
        top_extra=f"redis: {{url: \"{redis_url}\", timeout: 500ms}}\n"
                  f"rate_limits:\n{limit_yaml}", **kwargs)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, upstream) -> Iterator[Callable[[RedisServer | RedisCluster, str],
                                                             list[Gateway]]]:
    """Two gateway replicas sharing a Redis, per Redis and algorithm, with a route and a limit
    of its own for each of LIMITS (/l5/, /l100/, ...): started once for the limits' cases."""
    pairs: dict[tuple[str, str], list[Gateway]] = {}

    def pair(redis: RedisServer | RedisCluster, algorithm: str) -> list[Gateway]:
        if (redis.url, algorithm) not in pairs:
            # a day-long window: no refill or window edge can fall inside a burst
            limits = "".join(f"  l{n}: {{limit: {n}, per: 24h, key: global, "
                             f"algorithm: {algorithm}}}\n" for n in LIMITS)
            routes = "".join(f"  - name: l{n}\n    match: {{path_prefix: /l{n}/}}\n"
                             f"    rate_limits: [l{n}]\n" for n in LIMITS)
            tmp = tmp_path_factory.mktemp("replicas")
            pairs[redis.url, algorithm] = [
                # keys of their own: their replica heartbeats go on while other tests of the
                # module count the keys on the same Redis
                start_gateway(tmp, upstream.url, routes=routes,
                              top_extra=f"redis: {{url: \"{redis.url}\", timeout: 500ms, "
                                        f"key_prefix: \"pairs:\"}}\n"
                                        f"rate_limits:\n{limits}")
                for _ in range(2)]
        return pairs[redis.url, algorithm]

    yield pair
    for gateways in pairs.values():
        for gw in gateways:
            stop(gw.proc)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("limit", LIMITS)
def test_two_replicas_admit_exactly_the_limit(replicas, redis_server, algorithm: str,
                                              limit: int) -> None:
    gateways = replicas(redis_server, algorithm)
    redis_server.command("FLUSHALL")
    urls = [f"{gw.url}/l{limit}/x" for gw in gateways]
    statuses = asyncio.run(burst(urls, limit * 3))
    assert statuses.count(200) == limit
    assert statuses.count(429) == limit * 2


def test_cluster_holds_the_counters_sharded_by_client_key(tmp_path, upstream,
                                                         redis_cluster) -> None:
    # the gateway falls back to in-process limits when Redis fails (failure_mode: open), so the
    # statuses alone would not show that the cluster decided: the keys must be on its nodes
    import redis
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster as ClusterClient

    redis_cluster.command("FLUSHALL")
    tenants = [f"tenant-{i}" for i in range(24)]
    gw = limited_gateway(tmp_path, upstream.url,
                         "  shared: {limit: 2, per: 1h, key: \"header:X-Tenant\"}\n",
                         redis_cluster.url)
    try:
        for tenant in tenants:
            statuses = [request(gw.port, "GET", "/x", headers={"X-Tenant": tenant}).status
                        for _ in range(3)]
            assert statuses == [200, 200, 429], tenant
    finally:
        stop(gw.proc)
    per_node = {}
    for port in redis_cluster.ports:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            per_node[port] = sorted(k.decode() for k in node.keys("gw:*"))
    # the header name is lower-cased in the key
    expected = sorted(f"gw:{{h.x-tenant={t}}}:shared:s3600000" for t in tenants)
    assert sorted(k for keys in per_node.values() for k in keys) == expected, per_node
    assert sum(1 for keys in per_node.values() if keys) >= 2, per_node
    client = ClusterClient(startup_nodes=[ClusterNode("127.0.0.1", p) for p in redis_cluster.ports])
    try:
        for key in expected:  # each key sits on the node that owns its slot
            assert client.hget(key, "b") == b"2", key
    finally:
        client.close()
    assert "redis rate-limit call failed" not in gw.log_text()
    assert "breaker open" not in gw.log_text()


API_WINDOW_S = 4  # a multiple of the login window (2 s)


def shipped_with_short_windows(tmp_path: Path) -> Path:
    """The shipped development policy with only the login and api windows shortened."""
    child = tmp_path / "short-windows.yaml"
    child.write_text(f"extends: {ROOT / 'policies' / 'development.yaml'}\n"
                     f"rate_limits:\n  login: {{per: 2s}}\n  api: {{per: {API_WINDOW_S}s}}\n")
    return child


@pytest.mark.parametrize("backend", ["in-process", "redis"])
def test_shipped_login_and_api_limits_hold_and_recover(tmp_path, upstream, redis_server,
                                                       backend: str) -> None:
    redis_server.command("FLUSHALL")
    gw = run_policy_file(shipped_with_short_windows(tmp_path), upstream.url, tmp_path, env={
        "REDIS_URL": redis_server.url if backend == "redis" else ""})
    port = gw.port
    try:
        # windows are aligned to the clock (now // per): begin at the start of an api window
        # (a login window too), so that the 107 requests below fall in one window of each
        # however busy the machine (across a boundary a sliding window admits a few more)
        time.sleep(API_WINDOW_S - time.time() % API_WINDOW_S)
        logins = [request(port, "POST", "/api/auth/login", body=b"{}") for _ in range(6)]
        assert [r.status for r in logins] == [200] * 5 + [429]
        refused = logins[-1]
        assert json.loads(refused.body)["violated-policies"] == ["login"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Policy"] == \
            '"login";q=5;w=2, "api";q=100;w=4, "global";q=1000;w=3600'

        statuses = asyncio.run(burst([f"http://127.0.0.1:{port}/api/campaigns"], 101, 8))
        # the 5 login requests that were admitted count against api too
        assert statuses.count(200) == 95 and statuses.count(429) == 6

        wait_until(lambda: request(port, "POST", "/api/auth/login", body=b"{}").status == 200,
                   timeout=10, interval=0.2)
        wait_until(lambda: request(port, "GET", "/api/campaigns").status == 200,
                   timeout=12, interval=0.2)
    finally:
        stop(gw.proc)


def test_every_response_of_a_limited_route_carries_the_headers(tmp_path, upstream) -> None:
    gw = run_shipped("development.yaml", upstream.url, tmp_path)
    try:
        reply = request(gw.port, "GET", "/api/campaigns")
        assert reply.status == 200
        assert reply.headers["RateLimit-Policy"] == '"api";q=100;w=60, "global";q=1000;w=3600'
        assert reply.headers["RateLimit"] == '"api";r=99;t=' + reply.headers["X-RateLimit-Reset"]
        assert reply.headers["X-RateLimit-Limit"] == "100"
        assert reply.headers["X-RateLimit-Remaining"] == "99"
    finally:
        stop(gw.proc)


def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key(
    tmp_path, upstream
) -> None:
    gw = limited_gateway(tmp_path, upstream.url, "  shared: {limit: 2, per: 1h}\n")
    try:
        assert [request(gw.port, "GET", "/x").status for _ in range(2)] == [200, 200]
        spoofed = [request(gw.port, "GET", "/x", headers={"X-Forwarded-For": f"10.9.9.{i}"})
                   for i in range(3)]
        assert [r.status for r in spoofed] == [429] * 3
    finally:
        stop(gw.proc)


def test_forwarded_for_from_a_trusted_proxy_keys_each_client(tmp_path, upstream) -> None:
    gw = limited_gateway(tmp_path, upstream.url, "  shared: {limit: 2, per: 1h}\n",
                         server_extra="trusted_proxies: [127.0.0.0/8]")
    try:
        for client in ("198.51.100.1", "198.51.100.2"):
            statuses = [request(gw.port, "GET", "/x", headers={"X-Forwarded-For": client})
                        .status for _ in range(3)]
            assert statuses == [200, 200, 429]
    finally:
        stop(gw.proc)


def test_header_key_falls_back_to_client_ip_when_missing(tmp_path, upstream) -> None:
    gw = limited_gateway(tmp_path, upstream.url,
                         "  shared: {limit: 1, per: 1h, key: \"header:X-Tenant\"}\n")
    try:
        assert request(gw.port, "GET", "/x", headers={"X-Tenant": "a"}).status == 200
        assert request(gw.port, "GET", "/x", headers={"X-Tenant": "b"}).status == 200
        assert request(gw.port, "GET", "/x", headers={"X-Tenant": "a"}).status == 429
        assert request(gw.port, "GET", "/x").status == 200  # no header: its own (IP) counter
        assert request(gw.port, "GET", "/x").status == 429
    finally:
        stop(gw.proc)


def test_shadow_limit_lets_traffic_through_and_counts_it(tmp_path, upstream) -> None:
    gw = limited_gateway(tmp_path, upstream.url,
                         "  shared: {limit: 1, per: 1h, mode: shadow}\n")
    try:
        assert [request(gw.port, "GET", "/x").status for _ in range(3)] == [200] * 3
        metrics = metrics_text(gw)
        assert ('gateway_ratelimit_decisions_total{decision="shadow_limited",policy="shared",'
                'route="all"} 2.0') in metrics
        assert "shadow rate limit shared would refuse" in gw.log_text()
    finally:
        stop(gw.proc)
