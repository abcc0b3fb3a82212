"""Overload benchmark: the gateway under about 5x the load one worker can serve.

Usage:
    python loadtests/bench_overload.py           # full run: 5 s to measure, 20 s of overload
    python loadtests/bench_overload.py --quick   # 2 s and 4 s: checks the behaviour, in the suite

One gateway worker in front of the test upstream, whose answers take 50 ms (`/slow/0.05`), with
`upstream.max_connections: 32`: what one worker serves is then set by its pool, not by this
machine's noise, and it is measured first (a closed loop of 64 connections). Then requests
arrive open-loop, each on a new connection, at 5x that rate for the overload phase, while the
gateway's RSS is sampled. `server.limits.max_requests_in_progress: 64` is the overload bound.

Reported: the measured capacity; per answer status during the overload (every answer must be
200, 429 or the overload 503, and nothing else); p50/p99 of the admitted requests against the
unloaded ones; the gateway's RSS before, at its peak, and after; how long after the load stops
a request is served normally again. Nothing fails on speed: the exit status says whether the
behaviour held (no other status, no connection error, gateway alive, recovery within 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import start_gateway, start_upstream, stop  # noqa: E402

SLOW = "/slow/0.05"
ROUTES = "  - name: everything\n    match: {path_prefix: /}\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def one_request(port: int, timeout: float = 10.0) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                timeout)
        writer.write(f"GET {SLOW} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__, time.perf_counter() - started
    parts = line.split()
    status: int | str = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else repr(line)
    return status, time.perf_counter() - started


async def closed_loop(port: int, connections: int, duration: float) -> list[float]:
    """Latencies of the 200s served by `connections` clients back to back."""
    latencies: list[float] = []
    end = time.monotonic() + duration

    async def client() -> None:
        while time.monotonic() < end:
            status, took = await one_request(port)
            if status == 200:
                latencies.append(took)

    await asyncio.gather(*(client() for _ in range(connections)))
    return latencies


async def open_loop(port: int, rate: float, duration: float, pid: int
                    ) -> tuple[dict[str, int], list[float], int]:
    """Requests arriving at `rate` per second regardless of answers; statuses, admitted
    latencies and the peak RSS (KiB) seen meanwhile."""
    results: list[tuple[int | str, float]] = []
    tasks: set[asyncio.Task] = set()
    peak = rss_kib(pid)
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < duration:
        due = int((now - started) * rate) - sent
        for _ in range(due):
            task = asyncio.create_task(one_request(port))
            task.add_done_callback(lambda t: results.append(t.result()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(0, due)
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts, [took for status, took in results if status == 200], peak


async def recovery_time(port: int, normal_p99: float, limit: float = 5.0) -> float:
    """Seconds after the load stopped until a request is served within the normal p99."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        status, took = await one_request(port)
        if status == 200 and took <= max(normal_p99 * 2, 0.2):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("inf")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def run(quick: bool) -> dict[str, object]:
    measure_s, overload_s = (2.0, 4.0) if quick else (5.0, 20.0)
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        upstream = start_upstream()
        gw = start_gateway(Path(tmp), upstream.url, routes=ROUTES,
                           server_extra="limits: {max_requests_in_progress: 64}",
                           upstream_extra="max_connections: 32",
                           top_extra="observability: {access_log: {enabled: false}}")
        try:
            rss_before = rss_kib(gw.proc.pid)
            normal = asyncio.run(closed_loop(gw.port, 64, measure_s))
            capacity = len(normal) / measure_s
            counts, admitted, peak = asyncio.run(
                open_loop(gw.port, 5 * capacity, overload_s, gw.proc.pid))
            normal_p99 = pct(normal, 0.99)
            recovered = asyncio.run(recovery_time(gw.port, normal_p99))
            alive = gw.proc.poll() is None
            rss_after = rss_kib(gw.proc.pid) if alive else 0
        finally:
            stop(gw.proc)
            stop(upstream.proc)
    expected = {"200", "429", "503"}
    return {
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(5 * capacity, 1),
        "overload_seconds": overload_s,
        "statuses": counts,
        "admitted_rps": round(counts.get("200", 0) / overload_s, 1),
        "unloaded_ms": {"p50": round(pct(normal, 0.5) * 1000, 1),
                        "p99": round(normal_p99 * 1000, 1)},
        "admitted_ms": {"p50": round(pct(admitted, 0.5) * 1000, 1),
                        "p99": round(pct(admitted, 0.99) * 1000, 1)},
        "rss_mib": {"before": round(rss_before / 1024, 1), "peak": round(peak / 1024, 1),
                    "after": round(rss_after / 1024, 1)},
        "recovered_after_s": round(recovered, 3),
        "held": alive and set(counts) <= expected and recovered <= 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.quick)
    print(json.dumps(report, indent=2))
    if not report["held"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
