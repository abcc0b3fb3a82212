"""Fault injection for the rate limiter: a real Redis killed or stalled (SIGSTOP) under a paced
load of 200 requests/s through a real gateway process.

- `failure_mode: open`: zero 5xx and zero transport errors, in-process limits apply while Redis
  is away, and Redis decides again within 2 s of coming back.
- `failure_mode: closed`: 503 problem+json while Redis is away, no request waits much longer
  than `redis.timeout` (100 ms), 200s again within 2 s of Redis coming back.
- Redis losing its scripts (SCRIPT FLUSH, or a restart with nothing saved) is absorbed by the
  NOSCRIPT reload: the next request is still decided by Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.ratelimit.redis_backend import LUA
from tests.support.client import Reply, request
from tests.support.metrics import redis_errors, redis_successes
from tests.support.processes import Gateway, start_gateway, stop, wait_until
from tests.support.redis_server import RedisServer, start_redis

# a load generator at a fixed rate, latency bounds: alone (tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

RATE = 200  # requests/s of the load generator
WARMUP = 150  # requests answered before the fault is injected (~0.75 s)
OUTAGE = 300  # requests sent while Redis is away (~1.5 s)
AFTER = 500  # requests sent after Redis is back (~2.5 s)
MAX_LATENCY = 1.0  # redis.timeout is 100 ms: no request may hang anywhere near this
RECOVERY = 2.0  # Redis-backed decisions again within this long of Redis coming back
LIMIT = 3  # the small global limits
SCRIPT_SHA = hashlib.sha1(LUA.encode()).hexdigest()

ROUTES = """\
  - name: outage
    match: {path_prefix: /outage}
    rate_limits: [outage]
  - name: shared
    match: {path_prefix: /shared}
    rate_limits: [shared]
  - name: load
    match: {path_prefix: /}
    rate_limits: [bulk]
"""

LIMITS = f"""\
rate_limits:
  bulk: {{limit: 100000, per: 1h}}
  outage: {{limit: {LIMIT}, per: 1h, key: global}}
  shared: {{limit: {LIMIT}, per: 1h, key: global}}
"""


def bulk_key(prefix: str) -> str:
    return f"{prefix}{{ip=127.0.0.1}}:bulk:s3600000"


def global_key(prefix: str, policy: str) -> str:
    return f"{prefix}{{global}}:{policy}:s3600000"


def faulty_gateway(tmp_path: Path, upstream_url: str, redis_url: str, mode: str,
                   prefix: str, routes: str = "", limits: str = "") -> Gateway:
    """A gateway with ROUTES and LIMITS (`routes` go first, `limits` are added)."""
    return start_gateway(
        tmp_path, upstream_url, routes=routes + ROUTES,
        top_extra=f"redis: {{url: \"{redis_url}\", timeout: 100ms, failure_mode: {mode}, "
                  f"key_prefix: \"{prefix}\"}}\n" + LIMITS + limits)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts Redis servers (a new one, or again on an old one's port); stops them all after."""
    started: list[RedisServer] = []

    def make(old: RedisServer | None = None) -> RedisServer:
        if old is None:
            server = start_redis(tmp_path / "redis")
        else:  # the same port and directory: what a restarted Redis looks like to clients
            server = RedisServer(old.port, old.workdir, old.extra).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# --- observing Redis and the gateway ----------------------------------------------------------

def resp_int(raw: bytes) -> int | None:
    """An integer reply (`:1`) or a bulk string holding one (`$1\\r\\n2`); None for nil."""
    if raw.startswith(b":"):
        return int(raw[1:].split(b"\r\n")[0])
    if raw.startswith(b"$-1"):
        return None
    if raw.startswith(b"$"):
        return int(raw.split(b"\r\n")[1])
    raise AssertionError(f"unexpected Redis reply {raw!r}")


def key_exists(server: RedisServer, key: str) -> bool:
    return resp_int(server.command("EXISTS", key)) == 1


def window_count(server: RedisServer, key: str) -> int | None:
    """The current-window count of a sliding-window key (field b, see ratelimit/check.lua)."""
    return resp_int(server.command("HGET", key, "b"))


def get(gw: Gateway, path: str) -> Reply:
    return request(gw.port, "GET", path, timeout=5)


def process_state(server: RedisServer) -> str:
    assert server.proc is not None
    stat = Path(f"/proc/{server.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


# --- the load generator -----------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    sent: float  # time.monotonic() when the request started
    done: float
    status: int  # 0: transport error
    content_type: str = ""
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sent


class Load:
    """GETs to one URL at a fixed rate from a thread of its own, until stopped (at most
    `max_seconds`); every request is recorded as a Sample."""

    def __init__(self, url: str, rate: int = RATE, max_seconds: float = 15.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.rate = rate
        self.max_seconds = max_seconds
        self.samples: list[Sample] = []
        self.sent = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "load generator did not finish"
        if self._error is not None and exc[0] is None:
            raise self._error

    def answered(self) -> int:
        return len(self.samples)

    def wait_sent(self, count: int, timeout: float = 10.0) -> None:
        """Pacing: until the generator has sent `count` requests in all."""
        wait_until(lambda: self.sent >= count, timeout=timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by __exit__
            self._error = exc

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            i = 0
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                self.sent = i
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        sent = time.monotonic()
        try:
            async with session.get(self.url, headers=self.headers) as resp:
                await resp.read()
                sample = Sample(sent, time.monotonic(), resp.status,
                                resp.headers.get("Content-Type", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            sample = Sample(sent, time.monotonic(), 0, error=repr(exc))
        self.samples.append(sample)


async def burst(url: str, total: int, concurrency: int) -> list[int]:
    """`total` GETs, `concurrency` at a time (to open several pooled Redis connections)."""
    statuses: list[int] = []
    counter = iter(range(total))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async def worker() -> None:
            for _ in counter:
                async with session.get(url) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def summary(samples: list[Sample]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in samples:
        out[s.status] = out.get(s.status, 0) + 1
    return dict(sorted(out.items()))


# --- faults -----------------------------------------------------------------------------------

class Fault:
    """Takes Redis away (kill, or SIGSTOP) and brings it back (a fresh, empty Redis on the same
    port, or SIGCONT). `inject` returns once Redis is surely away; `restore` returns the moment
    Redis counts as back: PING answered by the restarted server, or SIGCONT sent."""

    def __init__(self, kind: str, server: RedisServer,
                 redis_factory: Callable[..., RedisServer]) -> None:
        self.kind = kind
        self.server = server
        self.redis_factory = redis_factory

    def inject(self) -> None:
        if self.kind == "kill":
            self.server.kill()  # returns after the process is reaped
        else:
            self.server.pause()
            wait_until(lambda: process_state(self.server) == "T", timeout=5, interval=0.005)

    def restore(self) -> float:
        if self.kind == "kill":
            self.server = self.redis_factory(self.server)  # start() waits for PING
            return time.monotonic()
        self.server.resume()
        back = time.monotonic()
        self.server.wait_ready(5)
        return back


FAULTS = ["kill", "stop"]


def decided_after(gw: Gateway, kind: str, server: RedisServer, prefix: str) -> tuple[int, int]:
    """A request whose answer only Redis, not the in-process state, gives once Redis is back:
    its status and the Redis counter it leaves."""
    # killed: the restarted Redis is empty, so `outage` is fresh there and used up in process;
    # stalled: `shared` is used up in Redis and has one request in process
    policy = "outage" if kind == "kill" else "shared"
    status = get(gw, f"/{policy}").status
    return status, window_count(server, global_key(prefix, policy))


@dataclass
class OpenRun:
    """What a `failure_mode: open` run through an outage saw, and what must hold of it (the
    same for a standalone Redis and for a Cluster node)."""

    samples: list[Sample]
    during: list[Sample]  # sent after the fault, answered before Redis was being restored
    outage: list[int]  # LIMIT + 1 requests on a counter only the outage saw
    shared_away: int  # one request on a counter used up in Redis before the fault
    errors_before: float
    errors_during: float
    recovery: float  # s from Redis back to a Redis decision
    key_recovery: float | None  # s from a restarted Redis back to the load's counter in it
    kind: str
    after: tuple[int, int]  # decided_after()

    def check(self) -> None:
        samples = self.samples
        assert [s for s in samples if s.status == 0] == [], "transport errors"
        assert [s for s in samples if s.status >= 500] == [], "5xx in failure_mode open"
        assert set(summary(samples)) == {200}
        assert len(self.during) >= OUTAGE - 20
        assert self.outage == [200] * LIMIT + [429], "in-process limit while Redis is away"
        assert self.shared_away == 200, "in-process state decides while Redis is away"
        assert self.errors_during > self.errors_before
        assert max(s.latency for s in samples) < MAX_LATENCY
        assert self.recovery < RECOVERY, \
            f"Redis decisions resumed {self.recovery:.2f} s after it came back"
        if self.key_recovery is not None:
            assert self.key_recovery < RECOVERY
        assert self.after == ((200, 1) if self.kind == "kill" else (429, LIMIT))


# --- failure_mode: open -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAULTS)
def test_open_mode_serves_through_a_redis_outage_and_shares_limits_again(
    tmp_path, upstream, redis_factory, kind: str
) -> None:
    server = redis_factory()
    prefix = f"gwo{kind}:"
    gw = faulty_gateway(tmp_path, upstream.url, server.url, "open", prefix)
    fault = Fault(kind, server, redis_factory)
    try:
        # before the fault Redis decides: the shared limit is used up in Redis only
        assert [get(gw, "/shared").status for _ in range(LIMIT + 1)] == [200] * LIMIT + [429]
        assert window_count(server, global_key(prefix, "shared")) == LIMIT
        errors_before = redis_errors(gw)
        assert errors_before == 0

        with Load(gw.url + "/load") as load:
            wait_until(lambda: load.answered() >= WARMUP, timeout=10)
            fault.inject()
            away_at = time.monotonic()
            mark = load.sent
            # in-process limits apply: a counter that sees traffic only while Redis is away...
            outage = [get(gw, "/outage").status for _ in range(LIMIT + 1)]
            # ...and one that Redis has used up, that the in-process state has not
            shared_away = get(gw, "/shared").status
            load.wait_sent(mark + OUTAGE)
            errors_during = redis_errors(gw)
            successes_before = redis_successes(gw)

            back_at = fault.restore()
            wait_until(lambda: redis_successes(gw) > successes_before, timeout=RECOVERY + 3,
                       interval=0.01)
            recovery = time.monotonic() - back_at
            key_recovery = None
            if kind == "kill":  # the restarted Redis is empty: the load's counter reappears
                wait_until(lambda: key_exists(fault.server, bulk_key(prefix)),
                           timeout=RECOVERY + 3, interval=0.01)
                key_recovery = time.monotonic() - back_at
            after = decided_after(gw, kind, fault.server, prefix)
            load.wait_sent(mark + OUTAGE + AFTER)
        samples = load.samples
        errors_after = redis_errors(gw)
    finally:
        stop(gw.proc)

    during = [s for s in samples if s.sent >= away_at and s.done <= back_at]
    max_latency = max(s.latency for s in samples)
    max_during = max(s.latency for s in during)
    print(f"\n[open/{kind}] statuses={summary(samples)} outage samples={len(during)} "
          f"max latency={max_latency * 1000:.0f} ms (outage {max_during * 1000:.0f} ms) "
          f"recovery={recovery:.3f} s key recovery={key_recovery and round(key_recovery, 3)} "
          f"redis errors {errors_before:.0f}->{errors_during:.0f}->{errors_after:.0f}")

    OpenRun(samples, during, outage, shared_away, errors_before, errors_during, recovery,
            key_recovery, kind, after).check()


# --- failure_mode: closed ---------------------------------------------------------------------

@dataclass
class ClosedRun:
    """What a `failure_mode: closed` run through an outage saw, and what must hold of it."""

    refused: Reply  # one request made just after the fault
    samples: list[Sample]
    during: list[Sample]  # sent after the fault, answered before Redis was being restored
    errors_before: float
    errors_during: float
    recovery: float  # s from Redis back to the last non-200 answer

    def check(self) -> None:
        refused, samples, during = self.refused, self.samples, self.during
        assert refused.status == 503
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        body = refused.json()
        assert (body["status"], body["detail"]) == (503, "rate limiting is unavailable")
        assert [s for s in samples if s.status == 0] == [], "transport errors"
        assert set(summary(samples)) <= {200, 503}
        assert len(during) >= OUTAGE - 20
        assert summary(during) == {503: len(during)}, "every request while Redis is away: 503"
        assert all(s.content_type.startswith("application/problem+json") for s in during)
        assert self.errors_during > self.errors_before
        assert max(s.latency for s in samples) < MAX_LATENCY, "a request hung while Redis was away"
        assert self.recovery < RECOVERY, f"503s until {self.recovery:.2f} s after Redis came back"
        # the load went on long enough after the last 503 to show recovery held
        last_refusal = max(s.done for s in samples if s.status != 200)
        assert len([s for s in samples if s.sent > last_refusal]) >= 300


@pytest.mark.parametrize("kind", FAULTS)
def test_closed_mode_refuses_fast_during_a_redis_outage_and_recovers(
    tmp_path, upstream, redis_factory, kind: str
) -> None:
    server = redis_factory()
    prefix = f"gwc{kind}:"
    gw = faulty_gateway(tmp_path, upstream.url, server.url, "closed", prefix)
    fault = Fault(kind, server, redis_factory)
    try:
        assert get(gw, "/x").status == 200
        errors_before = redis_errors(gw)
        with Load(gw.url + "/load") as load:
            wait_until(lambda: load.answered() >= WARMUP, timeout=10)
            fault.inject()
            away_at = time.monotonic()
            mark = load.sent
            refused = get(gw, "/x")
            load.wait_sent(mark + OUTAGE)
            errors_during = redis_errors(gw)
            restoring_at = time.monotonic()
            back_at = fault.restore()
            load.wait_sent(mark + OUTAGE + AFTER)
        samples = load.samples
    finally:
        stop(gw.proc)

    during = [s for s in samples if s.sent >= away_at and s.done <= restoring_at]
    late = [s for s in samples if s.status != 200 and s.done > back_at]
    recovery = max((s.done - back_at for s in late), default=0.0)
    max_latency = max(s.latency for s in samples)
    max_during = max(s.latency for s in during)
    print(f"\n[closed/{kind}] statuses={summary(samples)} outage samples={len(during)} "
          f"outage statuses={summary(during)} max latency={max_latency * 1000:.0f} ms "
          f"(outage {max_during * 1000:.0f} ms) recovery={recovery:.3f} s "
          f"redis errors {errors_before:.0f}->{errors_during:.0f}")

    ClosedRun(refused, samples, during, errors_before, errors_during, recovery).check()


# --- scripts and state lost -------------------------------------------------------------------

def test_script_flush_is_loaded_again_and_redis_still_decides(
    tmp_path, upstream, redis_factory
) -> None:
    server = redis_factory()
    prefix = "gwflush:"
    key = global_key(prefix, "shared")
    # closed: a request that Redis did not decide would be a 503, not a 200
    gw = faulty_gateway(tmp_path, upstream.url, server.url, "closed", prefix)
    try:
        assert get(gw, "/shared").status == 200
        assert window_count(server, key) == 1
        assert server.command("SCRIPT", "EXISTS", SCRIPT_SHA) == b"*1\r\n:1\r\n"
        assert server.command("SCRIPT", "FLUSH").startswith(b"+OK")
        assert server.command("SCRIPT", "EXISTS", SCRIPT_SHA) == b"*1\r\n:0\r\n"
        assert get(gw, "/shared").status == 200  # NOSCRIPT, SCRIPT LOAD, EVALSHA again
        assert window_count(server, key) == 2
        assert server.command("SCRIPT", "EXISTS", SCRIPT_SHA) == b"*1\r\n:1\r\n"
        assert [get(gw, "/shared").status for _ in range(2)] == [200, 429]
        assert window_count(server, key) == LIMIT
        errors = redis_errors(gw)
        log = gw.log_text()
    finally:
        stop(gw.proc)
    assert errors == 0, log


def test_redis_restarted_empty_while_idle_decides_again_within_2s(
    tmp_path, upstream, redis_factory
) -> None:
    """After a burst (served on the gateway's one pipelined Redis connection), Redis restarts
    (no script, no counters) while the gateway is idle; then the load comes back."""
    server = redis_factory()
    prefix = "gwidle:"
    gw = faulty_gateway(tmp_path, upstream.url, server.url, "closed", prefix)
    try:
        statuses = asyncio.run(burst(gw.url + "/load", 600, 32))
        assert statuses == [200] * 600
        connections = server.command("CLIENT", "LIST").count(b"id=") - 1  # minus this one
        server.kill()
        server = redis_factory(server)
        back_at = time.monotonic()
        successes_before = redis_successes(gw)
        with Load(gw.url + "/load") as load:
            load.wait_sent(AFTER)
        samples = load.samples
        successes = redis_successes(gw) - successes_before
        counted = key_exists(server, bulk_key(prefix))
        errors = redis_errors(gw)
        log = gw.log_text()
    finally:
        stop(gw.proc)

    bad = [s for s in samples if s.status != 200]
    recovery = max((s.done - back_at for s in bad), default=0.0)
    after_recovery = [s for s in samples if s.sent > back_at + recovery]
    print(f"\n[closed/idle restart] redis connections={connections} statuses={summary(samples)} "
          f"recovery={recovery:.3f} s max latency="
          f"{max(s.latency for s in samples) * 1000:.0f} ms redis errors={errors:.0f}")
    assert [s for s in samples if s.status == 0] == [], "transport errors"
    assert connections == 1  # 32 concurrent clients, one pipelined connection
    # the gateway saw the connection close and connects again: no request notices
    assert summary(samples) == {200: len(samples)}, log
    assert errors == 0
    assert recovery < RECOVERY, log
    assert len(after_recovery) >= 300 and all(s.status == 200 for s in after_recovery)
    assert counted, "the restarted Redis holds the load's counter"
    assert successes == summary(samples).get(200, 0), "every 200 was decided by Redis"
