"""A flood of simultaneous requests through two real gateway processes sharing one healthy
Redis: the shared limit holds exactly, and no Redis call is counted as failed. Then the same
in one process, made deterministic by blocking the event loop at the moments a flood does: a
healthy Redis's reply read late is a reply, while a stalled Redis still fails in time.

Each gateway reads hundreds of new connections in one event-loop turn, and parsing them takes
longer than `redis.timeout` (100 ms). uvloop runs expired timers before it polls sockets, so a
Redis reply that arrived during that turn is found only after the connection's deadline timer
has run: before the fix, that timer failed the calls (Redis "did not answer within 100ms"),
three such failures opened the breaker, and each gateway fell back to its own in-process
counters, admitting the limit once more (15 logins instead of 5; 600 requests instead of 300).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.redis.connection import RedisConnection
from gateway.redis.endpoint import parse
from gateway.redis.resp import encode as cmd
from tests.support import metrics
from tests.support.processes import Gateway, start_gateway, stop
from tests.support.redis_server import RedisServer, start_redis

# 1,000 simultaneous connections, a loop blocked on purpose, 100 ms Redis deadlines: alone
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

IO_TIMEOUT = 20.0  # any one connect/write/read on a client socket
TOTAL_TIMEOUT = 60.0  # the whole flood

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


FLOODS = [(500, 5, "15m", "sliding_window"), (900, 300, "1m", "sliding_window")] + [
    # issue 13: 1,000 simultaneous connections, each algorithm, limits 5, 300 and 1,000 (a day
    # long, so that no refill or window edge falls inside the flood)
    (1000, limit, "24h", algorithm) for algorithm in ("sliding_window", "fixed_window",
                                                      "token_bucket")
    for limit in (5, 300, 1000)]


def login_path(limit: int, per: str) -> str:
    """The login route whose limit is `limit` per `per`."""
    return f"/api/auth/login/{limit}-per-{per}"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory, upstream, redis_server: RedisServer
          ) -> Iterator[Callable[[str], list[Gateway]]]:
    """Two gateways sharing the Redis, per algorithm, with a login route and a limit for each
    of its FLOODS: started once for its floods."""
    started: dict[str, list[Gateway]] = {}

    def pair(algorithm: str) -> list[Gateway]:
        if algorithm not in started:
            limits = sorted({(limit, per) for _, limit, per, a in FLOODS if a == algorithm})
            routes = "".join(
                f"  - name: login-{limit}-per-{per}\n"
                f"    match: {{path: {login_path(limit, per)}, methods: [POST]}}\n"
                f"    rate_limits: [flood-{limit}-per-{per}]\n" for limit, per in limits)
            rate_limits = "".join(
                f"  flood-{limit}-per-{per}: {{limit: {limit}, per: {per}, key: client_ip,"
                f" algorithm: {algorithm}}}\n" for limit, per in limits)
            tmp = tmp_path_factory.mktemp("flood")
            started[algorithm] = [start_gateway(
                tmp, upstream.url, routes=routes, args=("--workers", "1"),
                # the admitted part of a flood reaches the test upstream at once: a bounded pool
                # that waits (never 503/504 from the upstream side), so that only the limit
                # decides
                upstream_extra="max_connections: 64\npool_timeout: 30s\ntimeouts: {connect: 10s}",
                top_extra=f"redis: {{url: \"{redis_server.url}\", timeout: 100ms, "
                          f"failure_mode: open}}\nrate_limits:\n{rate_limits}")
                for _ in range(2)]
        return started[algorithm]

    yield pair
    for gateways in started.values():
        for gw in gateways:
            stop(gw.proc)


def login(path: str) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}" % path.encode())


async def flood(ports: list[int], total: int, request: bytes) -> list[int | str]:
    """Open `total` connections (spread evenly over `ports`) first, then send `request` on
    each at once; every connection's status (or what went wrong)."""

    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)

    conns = []
    try:
        # in batches, so the listen backlog (1024) never overflows into SYN retries
        for start in range(0, total, 100):
            conns += await asyncio.gather(*(connect(ports[i % len(ports)])
                                            for i in range(start, min(total, start + 100))))
        # at once, without waiting for the gateways to accept: each then accepts and reads
        # hundreds of connections in a row, a loop turn much longer than redis.timeout
        for _, writer in conns:
            writer.write(request)

        async def status(reader: asyncio.StreamReader) -> int | str:
            try:
                line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
                await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # until the gateway closes
            except (OSError, TimeoutError) as exc:
                return repr(exc)
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else repr(line)

        return await asyncio.gather(*(status(reader) for reader, _ in conns))
    finally:
        for _, writer in conns:
            writer.close()


@pytest.mark.parametrize(("total", "limit", "per", "algorithm"), FLOODS,
                         ids=[f"{t}-requests-limit-{lim}-{a}" for t, lim, _, a in FLOODS])
def test_a_flood_over_two_gateways_admits_exactly_the_shared_limit(
        pairs, redis_server: RedisServer, total: int, limit: int, per: str,
        algorithm: str) -> None:
    gateways = pairs(algorithm)
    redis_server.command("FLUSHALL")
    errors_before = [metrics.total(gw, "gateway_redis_errors_total") for gw in gateways]
    logged_before = [len(gw.log_text()) for gw in gateways]
    statuses = asyncio.run(asyncio.wait_for(
        flood([gw.port for gw in gateways], total, login(login_path(limit, per))),
        TOTAL_TIMEOUT))
    errors = [metrics.total(gw, "gateway_redis_errors_total") - before
              for gw, before in zip(gateways, errors_before, strict=True)]
    logs = [gw.log_text()[start:] for gw, start in zip(gateways, logged_before, strict=True)]
    summary = {s: statuses.count(s) for s in set(statuses)}
    print(f"\n{total} requests, limit {limit}: statuses {summary}, redis errors {errors}")
    assert statuses.count(200) == limit, (summary, errors)
    assert statuses.count(429) == total - limit, summary
    assert errors == [0, 0], errors
    for log in logs:
        assert "breaker open" not in log, log[-2000:]


# -- the same in one process, on a loop blocked on purpose ---------------------------------------

TIMEOUT = 0.1  # redis.timeout
BUSY = 0.3  # one loop turn that long: hundreds of requests parsed in a row
CALLS = 50


def run_on(loop_kind: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """On uvloop (the gateway's loop: due timers run before the sockets are polled) or on
    asyncio's own loop."""
    bounded = asyncio.wait_for(coro, 20)
    return uvloop.run(bounded) if loop_kind == "uvloop" else asyncio.run(bounded)


async def calls_with_a_busy_turn(conn: RedisConnection, block: Callable[[], None]) -> list[Any]:
    """CALLS echo calls started together; `block()` runs right after they are queued (before
    they are written)."""
    tasks = [asyncio.ensure_future(conn.call(cmd("ECHO", f"m{i}"))) for i in range(CALLS)]
    await asyncio.sleep(0)  # the tasks have run (queued their calls), this resumes after them
    block()
    return await asyncio.gather(*tasks, return_exceptions=True)


def busy() -> None:
    time.sleep(BUSY)  # the loop does nothing else meanwhile: it is busy


EXPECTED = [f"m{i}".encode() for i in range(CALLS)]
LOOP_KINDS = ["uvloop", "asyncio"]


# Redis answers 20 ms after reading the calls (any Redis: no DEBUG SLEEP, which Redis 7 refuses
# by default): not in the poll right after the write, but during the busy turn after it
SPIN_20MS = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= 20000
return 1"""


class BusyReader(asyncio.Protocol):
    """Keeps the loop busy in the poll phase, as parsing hundreds of requests does."""

    def data_received(self, data: bytes) -> None:
        busy()


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_reply_that_came_while_the_loop_was_busy_is_a_reply(redis_server: RedisServer,
                                                              loop_kind: str) -> None:
    """The calls are written; the next poll runs a callback that keeps the loop busy for 3
    timeouts, and Redis answers meanwhile (20 ms later). uvloop then runs the deadline timer
    before it polls the socket again."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = RedisConnection(parse(redis_server.url), TIMEOUT)
        ours, theirs = socket.socketpair()
        try:
            await loop.connect_accepted_socket(BusyReader, ours)
            assert await conn.call(cmd("PING")) == b"PONG"
            link = conn._link
            tasks = [asyncio.ensure_future(conn.call(c)) for c in
                     [cmd("EVAL", SPIN_20MS, 0), *(cmd("ECHO", e) for e in EXPECTED)]]
            await asyncio.sleep(0)  # the calls are queued; they are written next turn
            theirs.send(b"x")  # so the poll right after the write finds this readable
            got = await asyncio.gather(*tasks, return_exceptions=True)
            assert got == [1, *EXPECTED]
            assert conn._link is link and link is not None and not link.lost
        finally:
            theirs.close()
            await conn.close()

    run_on(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_call_is_timed_from_its_write_not_from_when_it_was_queued(
        redis_server: RedisServer, loop_kind: str) -> None:
    """The loop is busy after the calls are queued and before they are written: Redis has not
    even seen them when their deadline, counted from the queueing, has passed."""
    async def main() -> None:
        conn = RedisConnection(parse(redis_server.url), TIMEOUT)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            assert await calls_with_a_busy_turn(conn, busy) == EXPECTED
        finally:
            await conn.close()

    run_on(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_connecting_while_the_loop_is_busy(redis_server: RedisServer, loop_kind: str) -> None:
    """The flood's first requests find no connection yet: connecting (TCP, then the setup
    command) spans loop turns that each take longer than the timeout."""
    async def main() -> None:
        conn = RedisConnection(parse(redis_server.url), TIMEOUT, setup=[cmd("PING")])
        try:
            assert await calls_with_a_busy_turn(conn, busy) == EXPECTED
        finally:
            await conn.close()

    run_on(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_stalled_redis_still_fails_when_the_loop_was_busy(tmp_path: Path,
                                                            loop_kind: str) -> None:
    """Redis stopped (SIGSTOP): the calls fail within about one timeout of the busy turn, and
    the connection is dropped; a busy loop buys a stalled Redis no more than a look at the
    socket after the next poll."""
    server = start_redis(tmp_path / "redis")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = RedisConnection(parse(server.url), TIMEOUT)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            link = conn._link
            server.pause()
            started = loop.time()
            got = await calls_with_a_busy_turn(conn, lambda: loop.call_soon(busy))
            elapsed = loop.time() - started
            assert all(isinstance(r, TimeoutError) for r in got), got[:3]
            assert BUSY <= elapsed < BUSY + TIMEOUT + 0.5, elapsed
            assert link is not None and link.lost
            # and without a busy loop: one timeout
            started = loop.time()
            got = await calls_with_a_busy_turn(conn, lambda: None)
            assert all(isinstance(r, TimeoutError) for r in got), got[:3]
            assert TIMEOUT <= loop.time() - started < TIMEOUT + 0.5, loop.time() - started
        finally:
            server.resume()
            await conn.close()

    try:
        run_on(loop_kind, main())
    finally:
        server.stop()
