"""Overload benchmark: the gateway under about 5x the load one worker can serve.

Usage:
    python loadtests/bench_overload.py           # full run: 5 s to measure, 20 s of overload
    python loadtests/bench_overload.py --quick   # 2 s and 4 s: checks the behaviour, in the suite

One gateway worker in front of the test upstream, whose answers take 100 ms (`--delay`), with
`upstream.max_connections: 32` (`--pool`): what one worker serves is then set by its pool, not
by this machine's noise, and it is measured first (a closed loop of 2 x pool connections). Then
requests arrive open-loop, each on a new connection, at 5x that rate for the overload phase,
while the gateway's RSS and CPU are sampled. `server.limits.max_requests_in_progress: 2 x pool`
is the overload bound. `--pin` puts the gateway on CPU 0 and this generator and the upstream on
CPU 1, so that the generator's own lateness (reported) does not eat the gateway's CPU.

Reported: the measured capacity; per answer status during the overload (every answer must be
200, 429 or the overload 503, and nothing else); p50/p99 of the admitted requests against the
unloaded ones, as the client saw them and inside the gateway (its histogram); the generator's
own lateness; the gateway's CPU; the kernel's listen-queue overflows (SYNs dropped, which a
client retries after 1 s, 3 s, ...); the gateway's RSS before, at its peak, and after; how
long after the load stops a request is served normally again. Nothing fails on speed: the exit
status says whether the behaviour held (no other status, no connection error, gateway alive,
recovery within 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import start_gateway, start_upstream, stop  # noqa: E402

ROUTES = "  - name: everything\n    match: {path_prefix: /}\n"


MAX_IN_FLIGHT = 15_000  # connections this generator holds at once, under its file limit


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (a client
    then retransmits its SYN after 1 s, 3 s, ...): machine-wide, so read around one phase."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_request(port: int, path: str, timeout: float = 10.0) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except TimeoutError:
        return "no answer within 10 s", time.perf_counter() - started
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}", time.perf_counter() - started
    parts = line.split()
    status: int | str = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else \
        "closed unanswered" if not line else repr(line)
    return status, time.perf_counter() - started


async def closed_loop(port: int, path: str, connections: int, duration: float) -> list[float]:
    """Latencies of the 200s served by `connections` clients back to back."""
    latencies: list[float] = []
    end = time.monotonic() + duration

    async def client() -> None:
        while time.monotonic() < end:
            status, took = await one_request(port, path)
            if status == 200:
                latencies.append(took)

    await asyncio.gather(*(client() for _ in range(connections)))
    return latencies


async def open_loop(port: int, path: str, rate: float, duration: float, pid: int
                    ) -> tuple[dict[str, int], list[float], int, list[float], float]:
    """Requests arriving at `rate` per second regardless of answers; statuses, admitted
    latencies, the peak RSS (KiB) seen meanwhile, this generator's own lateness (how late its
    5 ms ticks ran: what its clock adds to every latency it reports) and the gateway's CPU
    use while requests arrived (1.0: one core all the time)."""
    results: list[tuple[int | str, float]] = []
    lateness: list[float] = []
    tasks: set[asyncio.Task] = set()
    peak = rss_kib(pid)
    cpu_start = cpu_seconds(pid)
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < duration:
        due = int((now - started) * rate) - sent
        for _ in range(due):
            if len(tasks) >= MAX_IN_FLIGHT:  # this generator's own file limit
                results.append(("not sent: the generator at its in-flight limit", 0.0))
                continue
            task = asyncio.create_task(one_request(port, path))
            task.add_done_callback(lambda t: results.append(t.result()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(0, due)
        peak = max(peak, rss_kib(pid))
        tick = time.monotonic()
        await asyncio.sleep(0.005)
        lateness.append(time.monotonic() - tick - 0.005)
    busy = (cpu_seconds(pid) - cpu_start) / (time.monotonic() - started)
    await asyncio.gather(*tasks)
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts, [took for status, took in results if status == 200], peak, lateness, busy


def histogram(admin_port: int, name: str, labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one series of a Prometheus histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    return sorted(buckets)


def bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
                    q: float) -> float:
    """The bucket bound under which fraction `q` of the observations made between two
    scrapes fall."""
    old = dict(before)
    counts = [(bound, total - old.get(bound, 0.0)) for bound, total in after]
    if not counts or counts[-1][1] == 0:
        return float("nan")
    for bound, cumulative in counts:
        if cumulative >= q * counts[-1][1]:
            return bound
    return float("inf")


async def recovery_time(port: int, path: str, normal_p99: float, limit: float = 5.0) -> float:
    """Seconds after the load stopped until a request is served within the normal p99."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        status, took = await one_request(port, path)
        if status == 200 and took <= max(normal_p99 * 2, 0.2):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("inf")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def run(quick: bool, delay: float = 0.1, pool: int = 32, pin: bool = False
        ) -> dict[str, object]:
    measure_s, overload_s = (2.0, 4.0) if quick else (5.0, 20.0)
    path = f"/slow/{delay}"
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        upstream = start_upstream()
        gw = start_gateway(Path(tmp), upstream.url, routes=ROUTES,
                           server_extra=f"limits: {{max_requests_in_progress: {2 * pool}}}",
                           upstream_extra=f"max_connections: {pool}",
                           top_extra="observability: {access_log: {enabled: false}}")
        if pin:
            os.sched_setaffinity(gw.proc.pid, {0})
            os.sched_setaffinity(upstream.proc.pid, {1})
            os.sched_setaffinity(0, {1})
        try:
            rss_before = rss_kib(gw.proc.pid)
            normal = asyncio.run(closed_loop(gw.port, path, 2 * pool, measure_s))
            capacity = len(normal) / measure_s
            overflows_before = listen_overflows()
            series = ("gateway_http_request_duration_seconds", 'route="everything"')
            inside_before = histogram(gw.admin_port, *series)
            counts, admitted, peak, lateness, gateway_cpu = asyncio.run(
                open_loop(gw.port, path, 5 * capacity, overload_s, gw.proc.pid))
            overflows = listen_overflows() - overflows_before
            inside_p99 = bucket_quantile(inside_before, histogram(gw.admin_port, *series),
                                         0.99)
            normal_p99 = pct(normal, 0.99)
            recovered = asyncio.run(recovery_time(gw.port, path, normal_p99))
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
        "admitted_inside_gateway_p99_ms_at_most": round(inside_p99 * 1000, 1),
        "generator_lateness_ms": {"p50": round(pct(lateness, 0.5) * 1000, 1),
                                  "p99": round(pct(lateness, 0.99) * 1000, 1)},
        "gateway_cpu_busy": round(gateway_cpu, 2),
        "listen_queue_overflows": overflows,
        "rss_mib": {"before": round(rss_before / 1024, 1), "peak": round(peak / 1024, 1),
                    "after": round(rss_after / 1024, 1)},
        "recovered_after_s": round(recovered, 3),
        "held": alive and set(counts) <= expected and recovered <= 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    # the open loop can hold thousands of connections at once (as many as the gateway is late)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="seconds the upstream takes per answer")
    parser.add_argument("--pool", type=int, default=32,
                        help="upstream.max_connections; capacity is about pool / delay")
    parser.add_argument("--pin", action="store_true",
                        help="gateway on CPU 0; this generator and the upstream on CPU 1")
    args = parser.parse_args(argv)
    report = run(args.quick, args.delay, args.pool, args.pin)
    print(json.dumps(report, indent=2))
    if not report["held"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
