"""Traffic and accounting for the reliability suite (tests/reliability/).

- `PacedLoad`: an open-loop load at a fixed rate on its own thread, raw HTTP/1.1 over a small
  pool of keep-alive connections, every request bounded by a timeout; latency is measured
  from the moment a request was due (a late send counts against the gateway, no coordinated
  omission). Its `Summary` gives counts by status and by error kind, p50/p99/max.
- `hostile`: floods of connections that misbehave (trickled heads or bodies, idle keep-alive,
  never reading), each reporting when the gateway cut it.
- `Footprint`: a process's RSS, open descriptors and sockets to a port, from /proc.

Traffic goes to 127.0.0.1 only; every count and duration is bounded by the caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# --------------------------------------------------------------------------------------------
# figures


def report(scenario: str, **figures) -> None:
    """One `RELIABILITY {...}` line of figures (seen with `pytest -s`, not under xdist), also
    appended to the file GATEWAY_RELIABILITY_FIGURES names, if set (any worker, any run)."""
    from tests.support.scale import FULL
    line = json.dumps({"scenario": scenario, "full": FULL, **figures})
    print("RELIABILITY " + line)
    if path := os.environ.get("GATEWAY_RELIABILITY_FIGURES"):
        with open(path, "a") as out:
            out.write(line + "\n")


# --------------------------------------------------------------------------------------------
# descriptors of the test process


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); the
    soft limit now in force. Processes started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard if hard != resource.RLIM_INFINITY else wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# what a process holds


@dataclass(frozen=True)
class Footprint:
    rss_kib: int
    fds: int
    upstream_sockets: int  # ESTABLISHED TCP connections to the upstream port

    @staticmethod
    def of(pid: int, upstream_port: int | None = None) -> Footprint:
        return Footprint(rss_kib(pid), open_fds(pid),
                         sockets_to(pid, upstream_port) if upstream_port else 0)

    @property
    def other_fds(self) -> int:
        """Descriptors other than the upstream sockets (pooled ones come and go with load)."""
        return self.fds - self.upstream_sockets

    def __str__(self) -> str:
        return (f"RSS {self.rss_kib / 1024:.1f} MiB, {self.fds} fds, "
                f"{self.upstream_sockets} upstream sockets")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockets_to(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of `pid` whose remote port is `port`."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def sockets_from(pid: int, port: int) -> int:
    """TCP connections of `pid` accepted on its local `port` (clients), not yet closed."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.raddr)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute (0 for fewer than 2)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


# --------------------------------------------------------------------------------------------
# raw HTTP/1.1 on asyncio streams


class Closed(Exception):
    """The peer closed the connection before a whole response arrived."""


async def read_response(reader: asyncio.StreamReader, head_request: bool = False
                        ) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, lower-case headers, body); Content-Length, chunked or
    read-until-close bodies."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial[:200]) from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_request or 100 <= status < 200 or status in (204, 304):
        return status, headers, b""
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append((await reader.readexactly(size + 2))[:-2])
                if size == 0:  # no trailers: the 2 bytes read were the final CRLF
                    break
            body = b"".join(parts)
        else:
            body = await reader.read()
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial[:200]) from None
    return status, headers, body


# --------------------------------------------------------------------------------------------
# a paced load


@dataclass
class Outcome:
    due: float  # monotonic time the request was due
    latency: float  # from due to the end of the response (or the error)
    status: int | None
    error: str | None  # "timeout", "closed", "reset", "refused", ...
    path: str = ""
    service: float = 0.0  # from the moment it was sent (a connection free) to its end


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    gateway_cpu_percent: float | None = None  # set by a caller that measured it

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def by_status(self) -> collections.Counter:
        return collections.Counter(o.status for o in self.outcomes if o.status is not None)

    @property
    def errors(self) -> collections.Counter:
        return collections.Counter(o.error for o in self.outcomes if o.error is not None)

    def latencies(self, status: int | None = 200) -> list[float]:
        return [o.latency for o in self.outcomes if status is None or o.status == status]

    def p(self, q: float, status: int | None = 200) -> float:
        return percentile(self.latencies(status), q)

    @property
    def max_latency(self) -> float:
        return max((o.latency for o in self.outcomes), default=0.0)

    @property
    def max_service(self) -> float:
        """The longest a request took once sent (the load's own queueing left out)."""
        return max((o.service for o in self.outcomes), default=0.0)

    def figures(self) -> dict:
        """The figures docs/reliability.md reports (milliseconds)."""
        return {"requests": self.requests, "status": dict(sorted(self.by_status.items())),
                "errors": dict(self.errors), "p50_ms": round(self.p(0.50) * 1000, 1),
                "p99_ms": round(self.p(0.99) * 1000, 1),
                "max_ms": round(self.max_latency * 1000, 1),
                "max_service_ms": round(self.max_service * 1000, 1)}

    def __str__(self) -> str:
        return str(self.figures())


class PacedLoad:
    """`rate` requests per second to 127.0.0.1:`port` until stopped (or `max_requests`),
    each on a free keep-alive connection of the pool (a new one when none is free, at most
    `connections`; beyond that a request waits, and its wait counts in its latency).

    `path` is a string or a function of the request's number; `headers`, a function of it
    giving extra header lines ("Name: value\r\n" each). Use as a context manager or
    start()/stop(); stop() returns the Summary."""

    def __init__(self, port: int, rate: float = 50, path: str | Callable[[int], str] = "/load",
                 connections: int = 16, timeout: float = 10.0, host: str = "load.test",
                 max_requests: int = 1_000_000, method: str = "GET",
                 headers: Callable[[int], str] | None = None) -> None:
        self.port, self.rate, self.connections = port, rate, connections
        self.path = path if callable(path) else (lambda _n, p=path: p)
        self.headers = headers or (lambda _n: "")
        self.timeout, self.host, self.max_requests, self.method = (
            timeout, host, max_requests, method)
        self.summary = Summary()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.started = 0.0

    def __enter__(self) -> PacedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PacedLoad:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def count(self) -> int:
        return len(self.summary.outcomes)

    def stop(self) -> Summary:
        self._stopping.set()
        self._thread.join(self.timeout + 5)
        assert not self._thread.is_alive(), "the load did not stop: a request hung"
        return self.summary

    async def _main(self) -> None:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        slots = asyncio.Semaphore(self.connections)
        tasks: set[asyncio.Task] = set()
        start = time.monotonic()
        n = 0
        while not self._stopping.is_set() and n < self.max_requests:
            due = start + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(n, due, idle, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks)
        for _reader, writer in idle:
            writer.close()

    async def _one(self, n: int, due: float, idle: list, slots: asyncio.Semaphore) -> None:
        path = self.path(n)
        head = (f"{self.method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers(n)}\r\n"
                .encode("latin-1"))
        status, error = None, None
        conn = None
        async with slots:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    status, conn = await self._exchange(head, idle)
            except TimeoutError:
                error = "timeout"
            except (Closed, asyncio.IncompleteReadError):
                error = "closed"
            except ConnectionResetError:
                error = "reset"
            except ConnectionRefusedError:
                error = "refused"
            except OSError as exc:
                error = type(exc).__name__
            if conn is not None:
                idle.append(conn)
        now = time.monotonic()
        self.summary.outcomes.append(
            Outcome(due, now - due, status, error, path, now - sent))

    async def _exchange(self, head: bytes, idle: list):
        if idle:
            reader, writer = idle.pop()
            try:
                return await self._send_on(head, reader, writer)
            except Closed as exc:
                if exc.args[0]:
                    raise
            except (ConnectionResetError, BrokenPipeError):
                pass
            # a kept-alive connection the gateway closed meanwhile, nothing of an answer
            # read: once more on a new connection, as browsers do
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._send_on(head, reader, writer)

    async def _send_on(self, head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter):
        try:
            writer.write(head)
            status, headers, _body = await read_response(reader, self.method == "HEAD")
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
            return status, None
        return status, (reader, writer)


# --------------------------------------------------------------------------------------------
# hostile connections


@dataclass
class Cut:
    """What happened to one hostile connection."""
    opened: float
    cut_after: float | None  # seconds from opening until the gateway closed it; None: still open
    received: bytes = b""  # what the gateway sent before closing (first 200 bytes)
    error: str | None = None  # the connection could not be opened

    @property
    def status(self) -> int | None:
        if self.received.startswith(b"HTTP/1.1 "):
            return int(self.received[9:12])
        return None


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _watch(reader: asyncio.StreamReader, opened: float, limit: float) -> Cut:
    """Read until the gateway closes the connection, at most `limit` seconds from `opened`."""
    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, opened + limit - time.monotonic())):
            try:
                while chunk := await reader.read(65536):
                    received += chunk[:200 - len(received)] if len(received) < 200 else b""
            except (ConnectionResetError, BrokenPipeError):
                pass
            return Cut(opened, time.monotonic() - opened, received)
    return Cut(opened, None, received)


async def _trickle(port: int, data: bytes, interval: float, limit: float,
                   prefix: bytes = b"") -> Cut:
    """Open a connection, send `prefix` at once, then `data` one byte every `interval`
    seconds; report when the gateway cut it (within `limit` seconds)."""
    try:
        reader, writer = await _open(port)
    except OSError as exc:
        return Cut(time.monotonic(), None, error=type(exc).__name__)
    opened = time.monotonic()

    async def feed() -> None:
        with contextlib.suppress(OSError):
            if prefix:
                writer.write(prefix)
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(interval)

    feeder = asyncio.create_task(feed())
    cut = await _watch(reader, opened, limit)
    feeder.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError):
        await feeder
    writer.close()
    return cut


async def flood(count: int, make: Callable[[], object], ramp: float = 1.0) -> list[Cut]:
    """`count` hostile connections (coroutines from `make()`), opened evenly over `ramp`
    seconds; their Cuts."""
    async def staggered(i: int):
        await asyncio.sleep(ramp * i / count)
        return await make()
    return list(await asyncio.gather(*(staggered(i) for i in range(count))))


def slowloris(port: int, interval: float, limit: float) -> Callable[[], object]:
    """A request head that never ends, one byte every `interval` seconds."""
    head = b"GET /slowloris HTTP/1.1\r\nHost: gw.test\r\n" + b"X-A: b\r\n" * 500
    return lambda: _trickle(port, head, interval, limit)


def slow_body(port: int, interval: float, limit: float, size: int = 4096
              ) -> Callable[[], object]:
    """A whole head announcing `size` body bytes, then the body one byte every `interval`."""
    head = (b"POST /slow-body HTTP/1.1\r\nHost: gw.test\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % size)
    return lambda: _trickle(port, b"x" * size, interval, limit, prefix=head)


class Held:
    """Connections opened and kept by the test until closed (an idle keep-alive crowd)."""

    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.failed: collections.Counter = collections.Counter()

    async def open(self, port: int, count: int, path: str = "/idle", batch: int = 200) -> None:
        """`count` connections, each having made one request and now idle."""
        async def one() -> None:
            try:
                reader, writer = await _open(port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
                status, _h, _b = await read_response(reader)
                if status != 200:
                    self.failed[f"status {status}"] += 1
                self.conns.append((reader, writer))
            except (OSError, Closed) as exc:
                self.failed[type(exc).__name__] += 1
        for start in range(0, count, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, count - start))))

    def still_open(self) -> int:
        """Connections the gateway has not closed (call from the loop that opened them)."""
        return sum(1 for reader, _w in self.conns if not reader.at_eof())

    def close(self) -> None:
        for _reader, writer in self.conns:
            writer.close()
        self.conns.clear()


# --------------------------------------------------------------------------------------------
# a paced load in a process of its own


def _load_process(port: int, rate: float, path: str, started, stopping, results) -> None:
    with PacedLoad(port, rate, path=path) as load:
        started.set()
        stopping.wait(3600)
    results.put([dataclasses.astuple(o) for o in load.summary.outcomes])


class ProcessLoad:
    """PacedLoad in a process of its own, so that what it measures is not the test process's
    other work (a flood of thousands of coroutines takes the GIL from a load thread). Use as
    a context manager; `summary` once it has exited."""

    def __init__(self, port: int, rate: float = 50, path: str = "/load") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.started, self.stopping, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_load_process, args=(
            port, rate, path, self.started, self.stopping, self.results), daemon=True)
        self.summary = Summary()

    def __enter__(self) -> ProcessLoad:
        self.proc.start()
        assert self.started.wait(30), "the load process did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.summary = Summary([Outcome(*o) for o in self.results.get(timeout=60)])
        self.proc.join(10)
