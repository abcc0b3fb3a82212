"""The gateway's own life under load: SIGTERM, SIGHUP reloads, a worker killed with SIGKILL,
the file-descriptor limit reached. Each test starts its own gateway in front of the module's
chaos upstream (tests/support/chaos_upstream.py) and runs a paced load through it.

Figures: run with `-s`; each scenario prints one `RELIABILITY {...}` line.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.chaos_upstream import start_chaos
from tests.support.client import request
from tests.support.load import Footprint, PacedLoad, open_fds, report
from tests.support.metrics import total, value
from tests.support.processes import eventually, stop, wait_until
from tests.support.scale import scaled

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("reliability-life")]

RATE = scaled(50, 200)


@pytest.fixture(scope="module")
def chaos() -> Iterator[tuple[int, subprocess.Popen]]:
    port, proc = start_chaos()
    yield port, proc
    stop(proc)



def test_sigterm_under_load_answers_every_accepted_request_then_exits_0(
        gateway_factory, chaos) -> None:
    port, _ = chaos
    gw = gateway_factory(f"http://127.0.0.1:{port}",
                       server_extra="timeouts: {shutdown: 5s}")
    paths = ["/ok", "/slow/0.5"]  # half of the requests are in flight for 0.5 s
    with PacedLoad(gw.port, RATE, path=lambda n: paths[n % 2], connections=64) as load:
        wait_until(lambda: load.count() >= RATE)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(10)
        exited = time.monotonic() - signalled
    summary = load.summary
    # due 50 ms before the signal: sent, and read by the gateway, before it
    before = [o for o in summary.outcomes if o.due < signalled - 0.05]
    after = [o for o in summary.outcomes if o.due >= signalled]
    report("sigterm-under-load", load=summary.figures(), before_signal=len(before),
           after_signal={str(o.status or o.error): sum(1 for x in after
                                                       if (x.status or x.error)
                                                       == (o.status or o.error))
                         for o in after}, exit_code=code, exit_s=round(exited, 2))
    assert code == 0
    assert exited < 5 + 1, "not done within timeouts.shutdown"
    assert before and all(o.status == 200 for o in before), [
        (o.path, o.status, o.error) for o in before if o.status != 200]
    # after the signal: answered, told the gateway is draining, or refused: never a 500 or a
    # hang
    assert all(o.status in (200, 503, None) and o.error in (None, "refused", "closed",
                                                             "reset")
               for o in after), [(o.status, o.error) for o in after]


def test_sighup_reloads_under_load_lose_nothing_and_leak_nothing(gateway_factory, chaos) -> None:
    port, _ = chaos
    gw = gateway_factory(f"http://127.0.0.1:{port}",
                       server_extra="timeouts: {shutdown: 500ms}\nwatch: false",
                       top_extra="headers:\n  default:\n    set: {X-Policy: v0}")
    request(gw.port, "GET", "/ok")
    before = Footprint.of(gw.proc.pid, port)
    original = gw.config.read_text()
    reloads = scaled(5, 50)
    # at most 4 requests at once: the current pool holds at most 4 upstream sockets, so the
    # old pools' sockets, if they were never closed, would show
    with PacedLoad(gw.port, RATE, path="/ok", connections=4) as load:
        wait_until(lambda: load.count() >= RATE // 4)
        for n in range(1, reloads + 1):
            gw.config.write_text(original.replace("X-Policy: v0", f"X-Policy: v{n}"))
            gw.proc.send_signal(signal.SIGHUP)
            wait_until(lambda n=n: request(gw.port, "GET", "/ok").headers["X-Policy"]
                       == f"v{n}", timeout=20)
        reloaded = load.count()
        wait_until(lambda: load.count() >= reloaded + RATE // 4)
    summary = load.summary
    # each reload's old upstream pool is closed timeouts.shutdown later
    settled = eventually(lambda: _settled(gw.proc.pid, port, before), timeout=10)
    after = Footprint.of(gw.proc.pid, port)
    successes = value(gw, "gateway_config_reloads_total", result="success")
    report("sighup-under-load", load=summary.figures(), reloads=reloads, before=str(before),
           after=str(after))
    stop(gw.proc)
    assert successes == reloads
    assert summary.errors == {} and set(summary.by_status) == {200}, summary
    assert settled, f"descriptors leak over reloads: {before} -> {after}"


def _settled(pid: int, port: int, before: Footprint) -> bool:
    now = Footprint.of(pid, port)
    return now.other_fds <= before.other_fds and now.upstream_sockets <= 4 + 1


def test_a_worker_killed_with_sigkill_is_replaced_while_the_others_serve(
        gateway_factory, chaos) -> None:
    port, _ = chaos
    gw = gateway_factory(f"http://127.0.0.1:{port}", args=("--workers", "2"))
    supervisor = psutil.Process(gw.proc.pid)
    wait_until(lambda: len(supervisor.children()) == 2)
    workers = {p.pid for p in supervisor.children()}
    # new connections each time, spread by SO_REUSEPORT over both workers
    with PacedLoad(gw.port, RATE, path="/ok", connections=4) as load:
        wait_until(lambda: load.count() >= RATE)
        counted = total(gw, "gateway_http_requests_total")
        victim = min(workers)
        psutil.Process(victim).kill()
        killed = time.monotonic()
        wait_until(lambda: len(supervisor.children()) == 2
                   and victim not in {p.pid for p in supervisor.children()}, timeout=15)
        replaced = time.monotonic() - killed
        served = load.count()
        wait_until(lambda: load.count() >= served + RATE)
    summary = load.summary
    counted_after = total(gw, "gateway_http_requests_total")
    code = stop(gw.proc, timeout=20)
    # requests due a second after the kill: the load has left the dead worker's connections
    late = [o for o in summary.outcomes if o.due > killed + 1.0]
    report("worker-sigkill", load=summary.figures(), replaced_s=round(replaced, 2),
           requests_counted_before=counted, requests_counted_after=counted_after,
           failed_at_the_kill=sum(1 for o in summary.outcomes
                                  if o.status != 200 and o.due <= killed + 1.0))
    assert code == 0
    # only requests on the killed worker's connections at that moment may fail
    assert all(o.status == 200 for o in late), [(o.status, o.error) for o in late
                                               if o.status != 200]
    assert sum(1 for o in summary.outcomes if o.status != 200) <= 8
    # the killed worker's counts are kept; the survivors' and the new one's add up
    assert counted_after >= counted + RATE // 2


def test_the_descriptor_limit_reached_refuses_new_connections_and_recovers(
        gateway_factory, chaos) -> None:
    """At RLIMIT_NOFILE a new connection cannot be accepted: it is closed at once without an
    answer (libuv accepts it on a reserved descriptor and closes it) or waits in the backlog
    until a descriptor is free; never a crash, a spinning loop or a hang. The connections
    the gateway holds are served meanwhile, and new ones are once descriptors are free."""
    port, _ = chaos
    gw = gateway_factory(f"http://127.0.0.1:{port}")
    proc = psutil.Process(gw.proc.pid)
    assert _ask(_connect(gw.port)) == 200  # a pooled upstream connection from now on
    limit = open_fds(gw.proc.pid) + 40
    proc.rlimit(psutil.RLIMIT_NOFILE, (limit, proc.rlimit(psutil.RLIMIT_NOFILE)[1]))
    held: list[socket.socket] = []
    try:
        # keep-alive connections, each having made a request, until one is not served
        while len(held) < 100:
            held.append(_connect(gw.port))
            if (first := _ask(held[-1])) != 200:
                break
        else:
            pytest.fail("the descriptor limit never bit")
        waiting = held.pop()
        at_limit = open_fds(gw.proc.pid)
        proc.cpu_percent(None)
        time.sleep(1.0)  # the gateway at its limit, doing nothing: how busy is it?
        cpu = proc.cpu_percent(None)
        existing = [_ask(sock) for sock in held[:5]]
        for sock in held[-10:]:  # descriptors back
            sock.close()
        del held[-10:]
        second = _ask(waiting, timeout=5.0) if first == "timeout" else first
        waiting.close()
        # once the gateway has seen those close, new connections are served again
        fresh = eventually(lambda: _ask_new(gw.port) == 200, timeout=5)
    finally:
        for sock in held:
            sock.close()
    alive = gw.proc.poll() is None
    report("fd-limit", limit=limit, held=len(held), fds_at_limit=at_limit,
           cpu_percent_at_limit=cpu, over_the_limit=first, then=second, existing=existing,
           fresh_after_some_closed=fresh)
    assert alive
    assert first in ("closed", "timeout")
    assert second in ("closed", 200), "a connection left waiting was not served once it could be"
    assert existing == [200] * 5
    assert cpu < 50, f"the gateway spins at its descriptor limit ({cpu:.0f}% CPU)"
    assert fresh
    assert eventually(lambda: open_fds(gw.proc.pid) <= at_limit - 10)
    stop(gw.proc)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=1.0)


def _ask_new(port: int) -> int | str:
    with _connect(port) as sock:
        return _ask(sock)


def _ask(sock: socket.socket, timeout: float = 1.0) -> int | str:
    """GET /ok on a held connection: its status, "closed" when the gateway closed the
    connection without an answer, "timeout" when nothing came within `timeout`."""
    sock.settimeout(timeout)
    try:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += sock.recv(65536)
        return int(head[9:12])
    except TimeoutError:
        return "timeout"
    except OSError:
        return "closed"
