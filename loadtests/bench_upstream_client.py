"""Benchmark: what one proxied request costs the upstream client alone, aiohttp's against the
gateway's.

Usage:
    python loadtests/bench_upstream_client.py           # 5 rounds of 20,000 requests each
    python loadtests/bench_upstream_client.py --quick   # 1 round of 2,000: the script works

Both clients run in this process, on uvloop, against the same upstream (nginx `return 200`
with a 3-byte body when nginx is installed, else the test upstream, tests/support/upstream.py;
the output says which), 32 requests in flight over keep-alive connections, each request with
the seven headers the gateway sends for a plain GET:

  aiohttp   a ClientSession configured as the gateway's pool configured it before
            (no decompression, no auto headers, no cookie jar, timeouts), a yarl URL per
            request, the body read with `content.iter_any()`
  gateway   gateway/proxy/upstream_client.py: the head encoded once (`encode_head`), a pooled
            connection, the body read as an async iterator

Reported per client, as medians over the rounds (they alternate, the order rotating, so the
machine's noise hits both alike): requests per second and CPU µs per request of this process
(user + system: the client's Python work and its system calls; the upstream's CPU is not in
it), and the ratio gateway ÷ aiohttp of CPU per request. Nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402
from multidict import CIMultiDict  # noqa: E402
from yarl import URL  # noqa: E402

from gateway.proxy.upstream_client import encode_head, keepalive_pools  # noqa: E402
from gateway.settings.policy import UpstreamSettings, UpstreamTarget  # noqa: E402
from loadtests.side_by_side import nginx_binary, start_nginx_upstream  # noqa: E402
from tests.support.processes import start_upstream, stop  # noqa: E402

IN_FLIGHT = 32
PATH = "/api/bench"
HEADERS = (("Host", "app.example"), ("X-Forwarded-For", "127.0.0.1"),
           ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "app.example"),
           ("X-Real-IP", "127.0.0.1"), ("X-Request-ID", "0f0e6d5c-7a7b-4c1d-9e8f-112233445566"),
           ("Via", "1.1 gateway"))


async def with_aiohttp(port: int, requests: int) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=30.0),
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=30.0))
    base = f"http://127.0.0.1:{port}"

    async def worker(count: int) -> None:
        for _ in range(count):
            headers = CIMultiDict(HEADERS)
            headers["Host"] = f"127.0.0.1:{port}"
            response = await session.request(
                "GET", URL(base + PATH, encoded=True), headers=headers, allow_redirects=False,
                expect100=False, compress=None)
            async for _chunk in response.content.iter_any():
                pass
            response.release()

    try:
        await asyncio.gather(*(worker(requests // IN_FLIGHT) for _ in range(IN_FLIGHT)))
    finally:
        await session.close()


async def with_gateway_client(port: int, requests: int) -> None:
    target = UpstreamTarget("http", "127.0.0.1", port)
    pool = keepalive_pools(UpstreamSettings(targets=(target,)))[0]

    async def worker(count: int) -> None:
        for _ in range(count):
            headers = CIMultiDict(HEADERS)
            headers["Host"] = pool.authority
            head = encode_head("GET", PATH, headers)
            conn = pool.take_idle() or await pool.connect()
            response = await conn.send(head, None)
            async for _chunk in response:
                pass
            response.release()

    try:
        await asyncio.gather(*(worker(requests // IN_FLIGHT) for _ in range(IN_FLIGHT)))
    finally:
        pool.close()


def measure(run: Callable[[int, int], Awaitable[None]], port: int,
            requests: int) -> tuple[float, float]:
    """(requests per second, CPU µs per request of this process) for one pass."""
    cpu, wall = time.process_time(), time.perf_counter()
    uvloop.run(run(port, requests))  # type: ignore[arg-type]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return requests / wall, cpu / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2,000 requests")
    parser.add_argument("--rounds", type=int, help="rounds (default 5)")
    parser.add_argument("--requests", type=int, help="requests per client and round (20,000)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    requests = args.requests or (2_000 if args.quick else 20_000)
    clients = {"aiohttp": with_aiohttp, "gateway": with_gateway_client}

    with tempfile.TemporaryDirectory(prefix="bench-client-") as folder:
        if nginx_binary() is not None:
            www = Path(folder) / "www"
            www.mkdir()
            server = start_nginx_upstream(Path(folder), www)
            upstream, port, proc = "nginx `return 200`", server.port, server.proc
        else:
            test_upstream = start_upstream()
            upstream, port, proc = "the test upstream", test_upstream.port, test_upstream.proc
        print(f"upstream: {upstream} on 127.0.0.1:{port}; {rounds} round(s) of {requests} "
              f"requests per client, {IN_FLIGHT} in flight")
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        try:
            for r in range(rounds):
                order = list(clients) if r % 2 == 0 else list(clients)[::-1]
                for name in order:
                    rps, cpu = measure(clients[name], port, requests)
                    results[name].append((rps, cpu))
                    print(f"round {r + 1} {name:8} {rps:8.0f} req/s {cpu:7.1f} µs CPU/request",
                          flush=True)
        finally:
            stop(proc)
    for name, rows in results.items():
        print(f"median {name:8} {statistics.median(x[0] for x in rows):8.0f} req/s "
              f"{statistics.median(x[1] for x in rows):7.1f} µs CPU/request")
    ratio = statistics.median(g[1] / a[1] for g, a in zip(results["gateway"],
                                                          results["aiohttp"], strict=True))
    print(f"ratio gateway/aiohttp CPU per request: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
