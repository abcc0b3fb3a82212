"""Connecting to a stalled Redis while calls keep coming: a caller waiting on a connection
attempt fails with a connection error or a timeout, never asyncio.CancelledError (which would
escape the limiter and cancel the request), also when a later caller starts a new attempt
because the one it would join is past its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redis.connection import RedisConnection, RedisConnectionLost
from gateway.redis.endpoint import parse
from gateway.redis.resp import encode as cmd
from tests.support.redis_server import RedisServer, start_redis

# Redis deadlines of 50-200 ms asserted to the tens of milliseconds: alone (tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = start_redis(tmp_path / "redis")
    yield s
    s.stop()  # also resumes a paused one


def test_a_caller_joined_to_an_overdue_attempt_gets_a_connection_error_not_cancelled(
        server: RedisServer) -> None:
    """A (timeout 0.3 s) starts connecting to a stalled Redis (the kernel accepts the TCP
    connection, the setup command is never answered). B arrives 0.2 s later, joins A's attempt,
    its own deadline is 0.5 s. The loop is then busy (other requests) until just past A's
    deadline, so the attempt's own timeout has not run yet when C calls: C starts a new
    attempt, and B, still before its deadline, must get a connection error or a timeout (it
    got CancelledError when the overdue attempt was cancelled)."""
    timeout = 0.3

    async def main() -> tuple[object, float, float]:
        loop = asyncio.get_running_loop()
        conn = RedisConnection(parse(server.url), timeout, setup=[cmd("PING")])
        server.pause()
        try:
            t0 = loop.time()
            a = asyncio.ensure_future(conn.call(cmd("ECHO", "a")))
            await asyncio.sleep(0.2)
            b = asyncio.ensure_future(conn.call(cmd("ECHO", "b")))  # deadline t0 + 0.5
            await asyncio.sleep(0.02)
            assert not a.done() and not b.done()
            # the loop busy in other callbacks until past A's deadline (but not B's)
            while loop.time() < t0 + timeout + 0.02:
                time.sleep(0.001)
            c = asyncio.ensure_future(conn.call(cmd("ECHO", "c")))
            results = await asyncio.gather(a, b, c, return_exceptions=True)
            b_result = results[1]
            return b_result, t0, loop.time()
        finally:
            server.resume()
            await conn.close()

    b_result, _, _ = asyncio.run(asyncio.wait_for(main(), 15))
    assert isinstance(b_result, TimeoutError | RedisConnectionLost | OSError), (
        f"B (deadline not reached) got {b_result!r} ({type(b_result).__name__}); "
        "CancelledError escapes the limiter's `except Exception` and cancels the request")


def test_steady_calls_to_a_stalled_redis_only_fail_with_connection_errors(
        server: RedisServer) -> None:
    """No busy loop this time: requests arrive every ~2 ms (each a call with the 0.1 s timeout)
    while Redis is stalled. A request whose first step runs in the loop turn where the current
    attempt's deadline fires finds it overdue; cancelling it then (as the code once did) made
    the attempt end cancelled (asyncio.timeout only converts its own cancellation), and every
    caller still joined to it got CancelledError (about 1 in 5)."""
    timeout = 0.1

    async def main() -> dict[str, int]:
        conn = RedisConnection(parse(server.url), timeout, setup=[cmd("PING")])
        server.pause()
        try:
            tasks = []
            for i in range(1000):
                tasks.append(asyncio.ensure_future(conn.call(cmd("ECHO", f"r{i}"))))
                await asyncio.sleep(0.002)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            server.resume()
            await conn.close()
        kinds: dict[str, int] = {}
        for r in results:
            kinds[type(r).__name__] = kinds.get(type(r).__name__, 0) + 1
        return kinds

    kinds = asyncio.run(asyncio.wait_for(main(), 18))
    assert set(kinds) <= {"TimeoutError", "RedisConnectionLost"}, kinds
