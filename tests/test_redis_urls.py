"""Redis connection forms other than redis://host:port: a unix socket, and Sentinel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.redis.connection import RedisReplyError
from gateway.redis.resp import encode
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.redis_sentinel import start_sentinel
from tests.support.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

POLICY = RateLimitPolicy(name="p", limit=2, period_ms=60_000, algorithm="fixed_window")


async def three_checks(url: str) -> list[bool]:
    backend = RedisBackend(url, 2.0)
    try:
        checks = Checks([(POLICY, "gw:{t}:p")])
        return [(await backend.check(checks))[0] for _ in range(3)]
    finally:
        await backend.close()


def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = start_redis(tmp_path / "r", "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        assert asyncio.run(three_checks(f"unix://{sock}")) == [True, True, False]
        assert b"gw:{t}:p" in server.command("KEYS", "*")  # the same server decided
    finally:
        server.stop()


def test_sentinel_url_finds_the_master(tmp_path: Path) -> None:
    master = start_redis(tmp_path / "m")
    sentinel_port, sentinel = start_sentinel(tmp_path, master.port)
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/gwmaster/0"
        assert asyncio.run(three_checks(url)) == [True, True, False]
        assert b"gw:{t}:p" in master.command("KEYS", "*")
    finally:
        sentinel.terminate()
        sentinel.wait(5)
        master.stop()


def wait_for(what: str, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_sentinel_failover_is_followed_without_a_restart(tmp_path: Path) -> None:
    """One long-lived backend: after `SENTINEL FAILOVER` the old master is demoted (Sentinel
    kills its clients; a write to it would be answered READONLY); the backend asks Sentinel
    again on its next connection and decides on the new master, carrying on the replicated
    counters."""
    master = start_redis(tmp_path / "m")
    replica = start_redis(tmp_path / "r", "--replicaof", "127.0.0.1", str(master.port))
    wait_for("the replica to sync",
             lambda: b"master_link_status:up" in replica.command("INFO", "replication"))
    sentinel_port, sentinel = start_sentinel(
        tmp_path, master.port, "sentinel down-after-milliseconds gwmaster 1000",
        "sentinel failover-timeout gwmaster 5000")
    probe = RedisServer(sentinel_port, tmp_path)
    policy = RateLimitPolicy(name="f", limit=5, period_ms=3_600_000, algorithm="fixed_window")
    key = "gw:{fo}:f"
    try:
        wait_for("sentinel to know the replica", lambda: str(replica.port).encode()
                 in probe.command("SENTINEL", "REPLICAS", "gwmaster"))

        async def scenario() -> tuple[list[bool], int]:
            backend = RedisBackend(f"redis+sentinel://127.0.0.1:{sentinel_port}/gwmaster", 0.5)
            checks = Checks([(policy, key)])
            try:
                before = [(await backend.check(checks))[0] for _ in range(2)]
                # Sentinel promotes only a replica it has heard from (NOGOODSLAVE until then)
                await asyncio.to_thread(
                    wait_for, "sentinel to accept the failover",
                    lambda: probe.command("SENTINEL", "FAILOVER", "gwmaster").startswith(b"+OK"))
                await asyncio.to_thread(
                    wait_for, "the new master",
                    lambda: str(replica.port).encode() in probe.command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "gwmaster")
                    and b"role:master" in replica.command("INFO", "replication"))
                # until Sentinel demotes the old master (and kills its clients) it still takes
                # writes: Sentinel's split-brain window, documented in docs/ratelimiting.md
                await asyncio.to_thread(
                    wait_for, "the old master to be demoted",
                    lambda: b"role:slave" in master.command("INFO", "replication"))
                failed = 0
                after = []
                deadline = time.monotonic() + 15
                while len(after) < 4:  # calls meeting the demoted master fail, then it moves
                    assert time.monotonic() < deadline, f"never reached the new master ({failed})"
                    try:
                        after.append((await backend.check(checks))[0])
                    except Exception:
                        failed += 1
                        await asyncio.sleep(0.1)
                return before + after, failed
            finally:
                await backend.close()

        admitted, failed = asyncio.run(scenario())
        print(f"\n[sentinel failover] checks that failed while switching: {failed}")
        # 2 before and 3 after: the limit of 5 counted across the failover, then refused
        assert admitted == [True, True, True, True, True, False]
        assert replica.command("HGET", key, "b") == b"$1\r\n5\r\n"
        assert failed <= 3, failed  # the first calls after the switch, not a lasting outage
    finally:
        sentinel.terminate()
        sentinel.wait(5)
        replica.stop()
        master.stop()


@pytest.mark.parametrize("flushed", [False, True], ids=["loaded", "after-script-flush"])
def test_a_readonly_answer_drops_the_connection_so_the_next_call_connects_again(
        tmp_path: Path, flushed: bool) -> None:
    """A demoted master that still has our connection answers writes with READONLY: that is an
    error for this call, and the connection is dropped so that the next one asks again (with
    Sentinel: asks Sentinel for the master). Also when READONLY is the answer to the retry after
    a NOSCRIPT (a master propagates SCRIPT FLUSH to its replicas)."""
    master = start_redis(tmp_path / "m")
    replica = start_redis(tmp_path / "r", "--replicaof", "127.0.0.1", str(master.port))
    try:
        wait_for("the replica to sync",
                 lambda: b"master_link_status:up" in replica.command("INFO", "replication"))

        async def scenario() -> None:
            backend = RedisBackend(replica.url, 2.0)
            try:
                if flushed:
                    assert backend.client.connection is not None
                    assert await backend.client.connection.call(encode("PING")) == b"PONG"
                    assert replica.command("SCRIPT", "FLUSH").startswith(b"+OK")
                try:
                    await backend.check(Checks([(POLICY, "gw:{ro}:p")]))
                except RedisReplyError as exc:
                    assert "READONLY" in str(exc), exc
                else:
                    raise AssertionError("a replica accepted the script's writes")
                connection = backend.client.connection
                assert connection is not None and connection._link is not None
                assert connection._link.lost
            finally:
                await backend.close()

        asyncio.run(scenario())
    finally:
        replica.stop()
        master.stop()
