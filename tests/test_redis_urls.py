"""Redis connection forms other than redis://host:port: a unix socket, and Sentinel."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from gateway.ratelimit.config import RateLimitPolicy
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from tests.support.processes import free_port, wait_for_port
from tests.support.redis_server import RedisServer, redis_binary, start_redis

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
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\n"
                    f"sentinel monitor gwmaster 127.0.0.1 {master.port} 1\n")
    sentinel = subprocess.Popen([redis_binary(), str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(sentinel_port, sentinel)
        probe = RedisServer(sentinel_port, tmp_path)
        deadline = time.monotonic() + 10
        while b"gwmaster" not in probe.command("SENTINEL", "MASTERS"):
            assert time.monotonic() < deadline, "sentinel never reported the master"
            time.sleep(0.05)
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/gwmaster/0"
        assert asyncio.run(three_checks(url)) == [True, True, False]
        assert b"gw:{t}:p" in master.command("KEYS", "*")
    finally:
        sentinel.terminate()
        sentinel.wait(5)
        master.stop()
