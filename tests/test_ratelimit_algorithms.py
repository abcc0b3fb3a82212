"""Rate-limit arithmetic: exact admission counts, refusals consume nothing, retry times are
right, and the Lua script on a real Redis gives the same answers as the Python code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.algorithms import evaluate
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.redis_server import start_redis

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("ratelimit_algorithms")

ALGOS = ["fixed_window", "sliding_window", "token_bucket"]


def policy(algorithm: str, limit: int = 5, period_ms: int = 1000, burst: int | None = None,
           mode: str = "enforce", name: str = "p") -> RateLimitPolicy:
    return RateLimitPolicy(name=name, limit=limit, period_ms=period_ms, algorithm=algorithm,
                           burst=burst, mode=mode)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("limit", [1, 5, 100])
def test_a_burst_admits_exactly_the_limit(algorithm: str, limit: int) -> None:
    backend = MemoryBackend()
    p = policy(algorithm, limit=limit, period_ms=60_000)
    admitted = sum(backend.check([(p, "k")], now_ms=1_000_000)[0] for _ in range(limit * 3))
    assert admitted == limit


@pytest.mark.parametrize("algorithm", ALGOS)
def test_quota_comes_back_after_the_period(algorithm: str) -> None:
    backend = MemoryBackend()
    p = policy(algorithm, limit=3, period_ms=1000)
    t = 10_000_000
    assert [backend.check([(p, "k")], t)[0] for _ in range(4)] == [True] * 3 + [False]
    assert backend.check([(p, "k")], t + 2000)[0]


def test_a_refused_request_consumes_no_quota_on_any_limit() -> None:
    backend = MemoryBackend()
    wide = policy("fixed_window", limit=10, name="wide")
    narrow = policy("fixed_window", limit=1, name="narrow")
    t = 5_000_000
    assert backend.check([(wide, "w"), (narrow, "n")], t)[0]
    for _ in range(5):
        assert not backend.check([(wide, "w"), (narrow, "n")], t)[0]
    admitted, outcomes = backend.check([(wide, "w")], t)
    assert admitted and outcomes[0].remaining == 8  # only the first request counted


def test_shadow_limits_report_but_do_not_refuse() -> None:
    backend = MemoryBackend()
    shadow = policy("fixed_window", limit=1, mode="shadow")
    results = [backend.check([(shadow, "k")], 1000) for _ in range(3)]
    assert [admitted for admitted, _ in results] == [True, True, True]
    assert [o[0].allowed for _, o in results] == [True, False, False]


def test_token_bucket_burst_then_refill_rate() -> None:
    backend = MemoryBackend()
    p = policy("token_bucket", limit=10, period_ms=1000, burst=3)  # 1 token / 100 ms
    t = 1_000_000
    assert [backend.check([(p, "k")], t)[0] for _ in range(4)] == [True] * 3 + [False]
    assert not backend.check([(p, "k")], t + 99)[0]
    assert backend.check([(p, "k")], t + 100)[0]


def test_lru_bounds_memory() -> None:
    backend = MemoryBackend(max_keys=100)
    p = policy("fixed_window")
    for i in range(1000):
        backend.check([(p, f"k{i}")], 1000)
    assert len(backend) == 100


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALGOS), st.integers(1, 6), st.integers(50, 400),
       st.lists(st.integers(0, 120), min_size=1, max_size=25))
def test_retry_time_is_exactly_when_a_request_is_next_admitted(
    algorithm: str, limit: int, period: int, gaps: list[int]
) -> None:
    p = policy(algorithm, limit=limit, period_ms=period, burst=limit + 1)
    state, now = None, 1_000_000
    for gap in gaps:
        now += gap
        outcome = evaluate(p, state, now)
        if outcome.allowed:
            state = outcome.state
            continue
        wait = outcome.retry_ms
        assert wait > 0
        assert not evaluate(p, state, now + wait - 1).allowed
        assert evaluate(p, state, now + wait).allowed


# -- the Lua script against the Python arithmetic, on a real Redis ---------------------------

@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield server.url
    server.stop()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ALGOS), st.integers(1, 5), st.integers(0, 700),
                          st.sampled_from(["a", "b"])), min_size=1, max_size=30))
@pytest.mark.integration
def test_lua_and_python_agree_on_every_step(redis_url: str, steps) -> None:
    memory = MemoryBackend()

    async def run() -> None:
        backend = RedisBackend(redis_url, 1.0)
        flusher = aioredis.from_url(redis_url)
        await flusher.flushdb()
        await flusher.aclose()
        now = 1_700_000_000_000
        try:
            for algorithm, limit, gap, key in steps:
                now += gap
                p = policy(algorithm, limit=limit, period_ms=500, burst=limit + 1,
                           name=f"{algorithm}{limit}")
                items = [(p, f"{{t}}:{key}:{p.name}")]
                expected = memory.check(items, now)
                got = await backend.check(Checks(items), now)
                assert got[0] == expected[0]
                for g, e in zip(got[1], expected[1], strict=True):
                    assert (g.allowed, g.remaining, g.reset_ms, g.retry_ms) == \
                        (e.allowed, e.remaining, e.reset_ms, e.retry_ms)
        finally:
            await backend.close()

    asyncio.run(run())
