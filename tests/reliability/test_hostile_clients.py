"""Hostile clients while normal traffic goes on.

One gateway and one echo upstream (tests/support/upstream.py) for the module. A paced load
(tests/support/load.py) measures latency alone first (the quiet run), then during each flood:
slowloris heads, trickled bodies, a crowd of idle keep-alive connections, clients that never
read their answers. The hostile connections must be cut at the configured timeouts; the load
must see no error. A full run (scripts/test.sh --full) also asserts that the load's p99 stays
within 2x of the quiet run; a bounded run reports the figures (`-s`) and asserts only what a
busy machine cannot make flaky.

Figures: run with `-s`; each scenario prints one `RELIABILITY {...}` line (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests.support.client import request
from tests.support.load import (
    Footprint,
    Held,
    ProcessLoad,
    Summary,
    flood,
    report,
    rss_kib,
    slow_body,
    slowloris,
    sockets_to,
)
from tests.support.metrics import value
from tests.support.processes import (
    Gateway,
    Upstream,
    eventually,
    start_gateway,
    start_upstream,
    stop,
    wait_until,
)
from tests.support.scale import FULL, scaled

# one worker runs the module: the scenarios share a gateway and measure its footprint
# A full run asserts latency ratios: then the module runs while no other test does.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("reliability-hostile"),
              *([pytest.mark.exclusive] if FULL else [])]

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
IDLE_TIMEOUT = scaled(3.0, 30.0)  # the full crowd takes a while to open
SLACK = scaled(3.0, 5.0)  # how late a cut may come on a loaded 2-core machine
RATE = 50  # requests per second of the normal traffic
QUIET_SECONDS = scaled(1.0, 10.0)

SLOWLORIS = scaled(200, 2000)
SLOW_BODIES = scaled(200, 2000)
IDLE = scaled(300, 10_000)
NON_READERS = scaled(10, 50)


@dataclass
class Site:
    gw: Gateway
    up: Upstream
    quiet: Summary


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    up = start_upstream()
    gw = start_gateway(
        tmp_path_factory.mktemp("hostile"), up.url,
        server_extra=(f"timeouts: {{header: {HEADER_TIMEOUT}s, body: {BODY_TIMEOUT}s, "
                      f"idle: {IDLE_TIMEOUT}s}}\n"
                      "limits: {max_connections: 15000, max_body_size: 100MiB}"),
        upstream_extra="request_buffer: 64KiB")
    try:
        with ProcessLoad(gw.port, RATE) as load:
            time.sleep(QUIET_SECONDS)
        quiet = load.summary
        report("quiet", load=quiet.figures())
        assert quiet.requests and set(quiet.by_status) == {200}, quiet
        yield Site(gw, up, quiet)
    finally:
        stop(gw.proc)
        stop(up.proc)



@pytest.fixture
def quiet(site: Site) -> Summary:
    """The load alone, to compare with: in a full run measured again right before each
    scenario (which then runs alone: `exclusive`), else the module's."""
    if not FULL:
        return site.quiet
    with ProcessLoad(site.gw.port, RATE) as load:
        time.sleep(QUIET_SECONDS)
    return load.summary


def check_load(quiet: Summary, load: Summary, scenario: str) -> None:
    """The normal traffic beside a flood: every request a 200, none lost; in a full run its
    p99 within 2x of the quiet run's (with a 5 ms floor: sub-millisecond p99s jitter)."""
    assert load.requests > 0
    assert dict(load.errors) == {}, f"{scenario}: the normal traffic failed: {load}"
    assert set(load.by_status) == {200}, f"{scenario}: {load}"
    if FULL:
        bound = max(2 * quiet.p(0.99), 0.005)
        assert load.p(0.99) <= bound, (
            f"{scenario}: p99 {load.p(0.99) * 1000:.1f} ms > 2x quiet "
            f"{quiet.p(0.99) * 1000:.1f} ms")


def run_flood(site: Site, scenario: str, count: int, make, ramp: float) -> tuple[list, Summary,
                                                                              Footprint,
                                                                              Footprint]:
    before = Footprint.of(site.gw.proc.pid, site.up.port)
    gateway = psutil.Process(site.gw.proc.pid)
    gateway.cpu_percent(None)
    with ProcessLoad(site.gw.port, RATE) as load:
        cuts = asyncio.run(flood(count, make, ramp))
    load.summary.gateway_cpu_percent = gateway.cpu_percent(None)
    wait_until(lambda: Footprint.of(site.gw.proc.pid, site.up.port).other_fds <= before.other_fds,
             timeout=10)
    after = Footprint.of(site.gw.proc.pid, site.up.port)
    return cuts, load.summary, before, after


def cut_times(cuts: list) -> dict:
    times = sorted(c.cut_after for c in cuts if c.cut_after is not None)
    return {"connections": len(cuts), "not_opened": sum(1 for c in cuts if c.error),
            "still_open": sum(1 for c in cuts if c.cut_after is None and not c.error),
            "cut_min_s": round(times[0], 2) if times else None,
            "cut_max_s": round(times[-1], 2) if times else None}


def test_slowloris_heads_are_cut_at_the_header_timeout_while_traffic_flows(
        site: Site, quiet: Summary) -> None:
    # one byte every 0.5 s: never silent long enough for an idle timeout, never a whole head
    cuts, load, before, after = run_flood(
        site, "slowloris", SLOWLORIS,
        slowloris(site.gw.port, interval=0.5, limit=HEADER_TIMEOUT + SLACK + 2), ramp=1.0)
    report("slowloris", load=load.figures(), gateway_cpu_percent=load.gateway_cpu_percent,
           quiet_p99_ms=round(quiet.p(0.99) * 1000, 1), **cut_times(cuts), before=str(before),
           after=str(after))
    assert not [c for c in cuts if c.error], "a slowloris connection could not even open"
    late = [c for c in cuts if c.cut_after is None or c.cut_after > HEADER_TIMEOUT + SLACK]
    early = [c for c in cuts if c.cut_after is not None and c.cut_after < HEADER_TIMEOUT - 0.5]
    assert not late, f"{len(late)} slowloris connections outlived the header timeout"
    # (the gateway's clock starts at its accept, a little before the flood's `opened` when the
    # machine is busy)
    assert not early, f"{len(early)} cut before the header timeout"
    # cut without an answer that could be taken for a response to the unfinished request,
    # or with the gateway's own 408
    assert all(c.received == b"" or c.status == 408 for c in cuts), {
        c.received[:60] for c in cuts}
    check_load(quiet, load, "slowloris")
    assert after.other_fds <= before.other_fds


def test_trickled_bodies_are_cut_at_the_body_timeout_while_traffic_flows(
        site: Site, quiet: Summary) -> None:
    # a whole head, then one body byte every 2.5 s: each wait is longer than timeouts.body
    cuts, load, before, after = run_flood(
        site, "slow-bodies", SLOW_BODIES,
        slow_body(site.gw.port, interval=BODY_TIMEOUT + 0.5, limit=BODY_TIMEOUT + SLACK + 2),
        ramp=1.0)
    report("slow-bodies", load=load.figures(), gateway_cpu_percent=load.gateway_cpu_percent,
           quiet_p99_ms=round(quiet.p(0.99) * 1000, 1), **cut_times(cuts),
           statuses=sorted({str(c.status) for c in cuts}), before=str(before),
           after=str(after))
    assert not [c for c in cuts if c.error]
    late = [c for c in cuts if c.cut_after is None or c.cut_after > BODY_TIMEOUT + SLACK]
    assert not late, f"{len(late)} trickled bodies outlived the body timeout"
    assert {c.status for c in cuts} == {408}, {c.received[:80] for c in cuts}
    check_load(quiet, load, "slow-bodies")
    # no trickled body took an upstream connection: bodies under request_buffer are buffered
    assert after.upstream_sockets <= before.upstream_sockets + RATE


def test_an_idle_keepalive_crowd_costs_bounded_memory_and_is_closed_at_the_idle_timeout(
        site: Site, quiet: Summary) -> None:
    gw = site.gw
    before = Footprint.of(gw.proc.pid, site.up.port)
    held = Held()
    result: dict = {}

    def crowd() -> None:
        async def main() -> None:
            await held.open(gw.port, IDLE, batch=250)
            result["opened"] = time.monotonic()
            result["open_at_once"] = held.still_open()
            opened_ev.set()
            # wait for the gateway to close them all, at most the idle timeout + slack
            deadline = time.monotonic() + IDLE_TIMEOUT + SLACK + 5
            while held.still_open() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            result["closed"] = time.monotonic()
            result["left_open"] = held.still_open()
            held.close()
        asyncio.run(main())

    opened_ev = threading.Event()
    thread = threading.Thread(target=crowd)
    thread.start()
    assert opened_ev.wait(120), "the idle crowd did not open"
    during = Footprint.of(gw.proc.pid, site.up.port)
    # the normal traffic while the whole crowd is held (before the first is cut)
    with ProcessLoad(gw.port, RATE) as load:
        time.sleep(scaled(1.0, 5.0))
    thread.join(IDLE_TIMEOUT + SLACK + 30)
    wait_until(lambda: Footprint.of(gw.proc.pid, site.up.port).other_fds <= before.other_fds,
             timeout=10)
    after = Footprint.of(gw.proc.pid, site.up.port)
    per_conn = (during.rss_kib - before.rss_kib) / IDLE
    report("idle-keepalive", load=load.summary.figures(),
           quiet_p99_ms=round(quiet.p(0.99) * 1000, 1), connections=IDLE,
           failed=dict(held.failed), before=str(before), during=str(during), after=str(after),
           kib_per_connection=round(per_conn, 2),
           closed_after_s=round(result["closed"] - result["opened"], 2))
    assert not held.failed, dict(held.failed)
    assert result["open_at_once"] == IDLE
    assert during.fds >= before.fds + IDLE  # the gateway really held them all
    assert result["left_open"] == 0, "idle connections outlived timeouts.idle"
    # opened over some seconds: the last one is closed about IDLE_TIMEOUT after the crowd
    assert result["closed"] - result["opened"] <= IDLE_TIMEOUT + SLACK
    assert per_conn < 64, f"{per_conn:.1f} KiB of RSS per idle connection"
    assert after.other_fds <= before.other_fds
    check_load(quiet, load.summary, "idle-keepalive")


NON_READER_SIZE = 64 * 1024 * 1024


def _non_readers(port: int, count: int) -> list[socket.socket]:
    """`count` connections that ask for 64 MiB each and read nothing (small receive buffers)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /download/%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % NON_READER_SIZE)
        socks.append(sock)
    return socks


def test_clients_that_never_read_keep_the_gateways_memory_bounded(
        site: Site, quiet: Summary) -> None:
    gw = site.gw
    before = Footprint.of(gw.proc.pid, site.up.port)
    socks = _non_readers(gw.port, NON_READERS)
    try:
        # every download has started upstream and stalled on the client's full buffers
        wait_until(lambda: sockets_to(gw.proc.pid, site.up.port) >= NON_READERS, timeout=10)
        # the buffers fill, then stop growing (an unbounded one would go on)
        assert eventually(lambda: _rss_settled(gw.proc.pid), timeout=15), "RSS kept growing"
        during = Footprint.of(gw.proc.pid, site.up.port)
        # the normal traffic beside the stalled answers
        with ProcessLoad(gw.port, RATE) as load:
            time.sleep(scaled(1.0, 5.0))
        stalled = Footprint.of(gw.proc.pid, site.up.port)
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: Footprint.of(gw.proc.pid, site.up.port).upstream_sockets
             <= before.upstream_sockets + RATE, timeout=10)
    after = Footprint.of(gw.proc.pid, site.up.port)
    growth_mib = (during.rss_kib - before.rss_kib) / 1024
    report("non-readers", load=load.summary.figures(),
           quiet_p99_ms=round(quiet.p(0.99) * 1000, 1), connections=NON_READERS,
           body_mib=NON_READER_SIZE // (1024 * 1024), before=str(before), during=str(during),
           still_stalled=str(stalled), after=str(after), rss_growth_mib=round(growth_mib, 1))
    # each stalled answer may hold a few socket buffers' worth, never its 64 MiB body
    assert growth_mib < 2 * NON_READERS + 20, f"RSS grew {growth_mib:.0f} MiB"
    assert (stalled.rss_kib - during.rss_kib) / 1024 < 10, "memory kept growing while stalled"
    check_load(quiet, load.summary, "non-readers")


# found by the reliability suite: with no send timeout, a client that never read its answer
# held the gateway's upstream connection for as long as it kept its socket open
def test_a_client_that_never_reads_releases_its_upstream_connection(tmp_path,
                                                                   site: Site) -> None:
    # a pool of one connection: whether the stalled answer still holds it is a plain request
    gw = start_gateway(tmp_path, site.up.url,
                       server_extra="timeouts: {header: 1s, body: 1s, idle: 1s}",
                       upstream_extra="max_connections: 1\npool_timeout: 200ms")
    try:
        socks = _non_readers(gw.port, 1)
        try:
            wait_until(lambda: _status(gw) == 503, timeout=10)  # the stalled answer holds it
            # the longest timeout the gateway has for a silent peer, plus slack
            released = eventually(lambda: _status(gw) == 200, timeout=1 + SLACK, interval=0.2)
        finally:
            for sock in socks:
                sock.close()
        assert eventually(lambda: _status(gw) == 200), "not even released by the close"
        cut = value(gw, "gateway_client_timeouts_total", phase="send")
    finally:
        stop(gw.proc)
    assert released, "the upstream connection is still held after every timeout passed"
    assert cut == 1, "the stalled client was not cut by the send timeout"


def _rss_settled(pid: int) -> bool:
    """RSS grew by less than 1 MiB over the last half second."""
    first = rss_kib(pid)
    time.sleep(0.5)
    return rss_kib(pid) - first < 1024


def _status(gw: Gateway) -> int:
    return request(gw.port, "GET", "/x", timeout=5).status



def test_trickled_bodies_cannot_take_every_request_slot(tmp_path, site: Site) -> None:
    """Found by the reliability suite (a slow-POST denial of service): timeouts.body is per
    read, so bodies trickled one byte now and then are never cut by it; while they were
    counted as requests in progress, they held every slot and everyone else got 503. A body
    of up to upstream.request_buffer is now received outside that count."""
    gw = start_gateway(tmp_path, site.up.url,
                       server_extra="timeouts: {body: 5s}\n"
                                    "limits: {max_requests_in_progress: 10}",
                       upstream_extra="request_buffer: 64KiB")
    try:
        async def scenario() -> int:
            # 12 bodies, one byte a second: never silent for timeouts.body
            trickle = slow_body(gw.port, interval=1.0, limit=4.0, size=100)
            flood_task = asyncio.ensure_future(flood(12, trickle, ramp=0.2))
            await asyncio.sleep(1.5)
            status = await asyncio.to_thread(_status, gw)
            await flood_task
            return status
        assert asyncio.run(scenario()) == 200
    finally:
        stop(gw.proc)
