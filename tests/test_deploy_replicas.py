"""The scale-out promise of docs/deploy.md, as deployed: three gateway replicas on three ports,
each running the shipped production policy with the same REDIS_URL (what the Kubernetes
Deployment's replicas get), share one Redis and enforce each limit exactly, whichever replica
a request lands on, and each sees the other two."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.metrics import metrics_text
from tests.support.processes import Gateway, eventually, run_shipped, stop
from tests.support.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.integration
REPLICAS = 3
CLIENT = "198.51.100.7"  # one client, as the load balancer (trusted) reports it


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, upstream) -> Iterator[tuple[list[Gateway], RedisServer]]:
    tmp = tmp_path_factory.mktemp("replicas")
    redis = start_redis(tmp / "redis")
    env = {"REDIS_URL": redis.url, "FRONTEND_URL": "https://app.example.com",
           "PRODUCTION_URL": "https://www.example.com", "TRUSTED_PROXIES": "127.0.0.1/32"}
    gateways: list[Gateway] = []
    try:
        for _ in range(REPLICAS):
            gateways.append(run_shipped("production.yaml", upstream.url, tmp, env))
        yield gateways, redis
    finally:
        for gw in gateways:
            stop(gw.proc)
        redis.stop()


async def spread(gateways: list[Gateway], method: str, path: str, total: int) -> list[list[int]]:
    """`total` requests at once, round robin over the replicas: each replica's statuses."""
    statuses: list[list[int]] = [[] for _ in gateways]

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        index = i % len(gateways)
        async with session.request(method, gateways[index].url + path,
                                   headers={"X-Forwarded-For": CLIENT}) as resp:
            await resp.read()
            statuses[index].append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) > 0

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(total)))
    return statuses


def check_three_replicas_see_each_other_through_redis(replicas):
    gateways, _ = replicas

    def all_see_three() -> bool:
        return all(f"gateway_ratelimit_replicas {REPLICAS}.0" in metrics_text(gw)
                   for gw in gateways)

    assert eventually(all_see_three, timeout=10), metrics_text(gateways[0])


def check_three_replicas_admit_the_login_limit_exactly_once_between_them(replicas):
    gateways, redis = replicas
    redis.command("FLUSHALL")
    statuses = asyncio.run(spread(gateways, "POST", "/api/auth/login", 30))
    flat = [s for per_replica in statuses for s in per_replica]
    assert flat.count(429) == 25, statuses  # production.yaml: login 5 per 15 minutes
    assert len(flat) - flat.count(429) == 5
    assert all(len(per_replica) == 10 for per_replica in statuses)


def check_three_replicas_admit_the_api_limit_exactly_once_between_them(replicas):
    gateways, redis = replicas
    redis.command("FLUSHALL")
    statuses = asyncio.run(spread(gateways, "GET", "/api/campaigns", 150))
    flat = [s for per_replica in statuses for s in per_replica]
    assert flat.count(429) == 50, statuses  # production.yaml: api 100 a minute per client
    assert flat.count(200) == 100


# One test, so that the replicas start once (xdist's groups do not apply under pytest 9: see
# tests/test_deploy_compose.py); each check reports on its own.
def test_three_replicas_share_one_redis_and_enforce_each_limit_exactly(replicas, subtests):
    for check in (check_three_replicas_see_each_other_through_redis,
                  check_three_replicas_admit_the_login_limit_exactly_once_between_them,
                  check_three_replicas_admit_the_api_limit_exactly_once_between_them):
        with subtests.test(msg=check.__name__.removeprefix("check_")):
            check(replicas)
