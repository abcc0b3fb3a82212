"""redis+sentinel:// master discovery (gateway/redis/sentinel.py) against real
redis-server and Sentinel processes: an unknown service fails as a connection error, a stalled
Sentinel does not hide a healthy one, a Sentinel without a password accepts the URL's, and
close() closes the Sentinel connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.redis.connection import RedisConnectionLost, RedisReplyError
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.processes import stop
from tests.support.redis_sentinel import start_sentinel
from tests.support.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

POLICY = RateLimitPolicy(name="p", limit=2, period_ms=60_000, algorithm="fixed_window")
DOCUMENTED = (TimeoutError, OSError, RedisConnectionLost, RedisReplyError)


@pytest.fixture
def sentinel_for(tmp_path: Path) -> Iterator[Callable[..., int]]:
    procs: list[subprocess.Popen] = []

    def start(master_port: int, *extra_conf: str) -> int:
        port, proc = start_sentinel(tmp_path, master_port, *extra_conf)
        procs.append(proc)
        return port

    yield start
    for proc in procs:
        stop(proc)


def test_an_unknown_service_fails_with_a_documented_exception(
        tmp_path: Path, sentinel_for: Callable[..., int]) -> None:
    """RedisConnection.call raises TimeoutError, RedisConnectionLost or OSError when Redis
    cannot be reached; with redis-py's Sentinel an unknown service raised its own
    MasterNotFoundError instead."""
    master = start_redis(tmp_path / "m")
    try:
        port = sentinel_for(master.port)

        async def main() -> BaseException | None:
            backend = RedisBackend(f"redis+sentinel://127.0.0.1:{port}/no-such-master", 1.0)
            try:
                await backend.check(Checks([(POLICY, "gw:{s}:p")]))
            except BaseException as exc:
                return exc
            finally:
                await backend.close()
            return None

        exc = asyncio.run(asyncio.wait_for(main(), 15))
        assert isinstance(exc, DOCUMENTED), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    finally:
        master.stop()


def test_close_closes_the_sentinel_connections(
        tmp_path: Path, sentinel_for: Callable[..., int]) -> None:
    """backend.close() closes the Sentinel connections too (a limiter replaced by a policy
    reload left one socket per Sentinel open until garbage collection)."""
    master = start_redis(tmp_path / "m")
    try:
        port = sentinel_for(master.port)
        probe = RedisServer(port, tmp_path)

        def clients() -> int:
            text = probe.command("INFO", "clients").decode()
            return int(text.split("connected_clients:")[1].split()[0])

        async def main() -> tuple[int, int, int]:
            before = clients()
            backend = RedisBackend(f"redis+sentinel://127.0.0.1:{port}/gwmaster", 1.0)
            assert (await backend.check(Checks([(POLICY, "gw:{s}:p")])))[0] is True
            during = clients()
            await backend.close()
            # until the Sentinel has seen the sockets close (bounded); `backend` is still
            # referenced here, as by a caller, so garbage collection closes nothing
            deadline = time.monotonic() + 5
            while (after := clients()) != before and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            del backend
            return before, during, after

        before, during, after = asyncio.run(asyncio.wait_for(main(), 15))
        assert during > before  # the locator's connection, seen by the Sentinel
        assert after == before, (
            f"Sentinel clients: {before} before, {during} while in use, {after} after close()")
    finally:
        master.stop()


def test_a_stalled_first_sentinel_does_not_hide_the_healthy_second_one(
        tmp_path: Path, sentinel_for: Callable[..., int]) -> None:
    """Two Sentinels; the first one listed stalls (SIGSTOP: the kernel still accepts the TCP
    connection, nothing answers), as a Sentinel host that died without resetting connections.
    redis-py's discover_master asked them in order without a socket timeout, so every
    connection attempt spent its deadline on the first and Redis was never reached."""
    master = start_redis(tmp_path / "m")
    try:
        stalled = sentinel_for(master.port)
        healthy = sentinel_for(master.port)
        url = f"redis+sentinel://127.0.0.1:{stalled},127.0.0.1:{healthy}/gwmaster"
        # find the first Sentinel's process: the fixture started it first
        pid = int(RedisServer(stalled, tmp_path).command("INFO", "server").decode()
                  .split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            async def main() -> list[object]:
                backend = RedisBackend(url, 0.5)
                outcomes: list[object] = []
                try:
                    for i in range(6):  # 3 s of requests, each with the 0.5 s timeout
                        try:
                            outcomes.append((await backend.check(
                                Checks([(POLICY, f"gw:{{s{i}}}:p")])))[0])
                        except Exception as exc:
                            outcomes.append(exc)
                finally:
                    await backend.close()
                return outcomes

            outcomes = asyncio.run(asyncio.wait_for(main(), 15))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert outcomes == [True] * 6, (
            f"the healthy second Sentinel was not asked: {outcomes!r}")
    finally:
        master.stop()


def test_the_url_password_reaches_the_master_through_a_sentinel_without_one(
        tmp_path: Path, sentinel_for: Callable[..., int]) -> None:
    """The URL has one password, for the master; a Sentinel without a password answers AUTH
    with an error, which must not stop the gateway from asking it."""
    master = start_redis(tmp_path / "m")
    try:
        assert master.command("CONFIG", "SET", "requirepass", "s3cret").startswith(b"+OK")
        port = sentinel_for(master.port, "sentinel auth-pass gwmaster s3cret")
        url = f"redis+sentinel://:s3cret@127.0.0.1:{port}/gwmaster"

        async def main() -> list[bool]:
            backend = RedisBackend(url, 1.0)
            try:
                checks = Checks([(POLICY, "gw:{pw}:p")])
                return [(await backend.check(checks))[0] for _ in range(3)]
            finally:
                await backend.close()

        assert asyncio.run(asyncio.wait_for(main(), 15)) == [True, True, False]
        wrong = url.replace("s3cret", "wrong")

        async def refused() -> BaseException | None:
            backend = RedisBackend(wrong, 1.0)
            try:
                await backend.check(Checks([(POLICY, "gw:{pw}:p")]))
            except BaseException as exc:
                return exc
            finally:
                await backend.close()
            return None

        exc = asyncio.run(asyncio.wait_for(refused(), 15))
        assert isinstance(exc, RedisReplyError) and "WRONGPASS" in str(exc), exc
    finally:
        master.stop()
