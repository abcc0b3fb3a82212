"""The pipelined Redis connection (gateway/redis/connection.py) against real redis-server processes:
replies matched to callers, one write per loop turn, error replies as values, cancellation,
the one-timer deadline, reconnecting after kills and restarts, AUTH/SELECT/setup on every new
connection, and the backend's NOSCRIPT reload."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.redis.connection import (
    RedisConnection,
    RedisConnectionLost,
    RedisReplyError,
)
from gateway.redis.endpoint import parse
from gateway.redis.resp import encode as cmd
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer, start_redis

# Redis deadlines of 50-200 ms asserted to the tens of milliseconds: alone (tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

SLACK = 1.0  # how much later than its deadline a failing call may end
LIMIT = 20.0  # a test whose calls hang fails after this long instead of hanging


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, LIMIT))


def raw(port: int, *commands: tuple[str, ...]) -> list[Any]:
    """Several commands on one fresh socket (so AUTH and SELECT apply to the ones after them);
    their parsed replies."""
    reader = hiredis.Reader()
    replies: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(cmd(*c) for c in commands))
        while len(replies) < len(commands):
            data = sock.recv(65536)
            assert data, f"redis closed the socket after {replies!r}"
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    return replies


def info_field(port: int, section: str, field: str) -> int:
    text = raw(port, ("INFO", section))[0].decode()
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no {field} in INFO {section}")


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Let the loop run until `predicate` holds (a readiness check, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def connection(server: RedisServer, timeout: float = 2.0, **kwargs: Any) -> RedisConnection:
    return RedisConnection(parse(server.url), timeout, **kwargs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the tests that neither stop nor pause it."""
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Redis servers of this test only (to kill, pause, restart on the same port)."""
    started: list[RedisServer] = []

    def make(old: RedisServer | None = None, server: RedisServer | None = None) -> RedisServer:
        if server is None:
            server = (RedisServer(free_port(), tmp_path / f"redis{len(started)}")
                      if old is None else RedisServer(old.port, old.workdir, old.extra))
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()  # also resumes a paused one


# -- replies and callers -----------------------------------------------------------------------

def test_concurrent_callers_each_get_their_own_reply(shared: RedisServer) -> None:
    """500 calls in flight at once, replies of very different sizes (so hiredis sees replies
    split across reads): every caller gets the answer to its own command."""
    prefix = f"conc{time.monotonic_ns()}"

    async def main() -> None:
        conn = connection(shared)
        try:
            calls = []
            expected: list[Any] = []
            for i in range(500):
                if i % 3 == 0:
                    calls.append(cmd("INCRBY", f"{prefix}:{i}", i + 1))
                    expected.append(i + 1)
                else:
                    payload = f"<{i}>".encode() * (1 + (i * 37) % 700)
                    calls.append(cmd("ECHO", payload))
                    expected.append(payload)
            got = await asyncio.gather(*(conn.call(c) for c in calls))
            assert got == expected
            # callers arriving in different loop turns, interleaved with the replies
            async def later(i: int) -> Any:
                await asyncio.sleep((i % 7) * 0.001)
                return await conn.call(cmd("ECHO", f"late-{i}"))
            got = await asyncio.gather(*(later(i) for i in range(200)))
            assert got == [f"late-{i}".encode() for i in range(200)]
        finally:
            await conn.close()

    run(main())


def test_calls_of_one_loop_turn_go_out_in_one_write(shared: RedisServer) -> None:
    async def main() -> None:
        conn = connection(shared)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            link = conn._link
            assert link is not None and link.transport is not None
            transport = link.transport
            writes: list[bytes] = []
            write = transport.write

            def counting(data: bytes) -> None:  # counts, then really writes
                writes.append(data)
                write(data)
            transport.write = counting  # type: ignore[method-assign]

            # Redis's own count of socket reads: one pipelined write is a handful of reads,
            # 200 commands one by one are at least 200
            reads = info_field(shared.port, "stats", "total_reads_processed")
            got = await asyncio.gather(*(conn.call(cmd("ECHO", f"m{i}")) for i in range(200)))
            assert got == [f"m{i}".encode() for i in range(200)]
            assert len(writes) == 1
            assert writes[0] == b"".join(cmd("ECHO", f"m{i}") for i in range(200))
            pipelined = info_field(shared.port, "stats", "total_reads_processed") - reads

            reads = info_field(shared.port, "stats", "total_reads_processed")
            for i in range(200):
                assert await conn.call(cmd("ECHO", f"s{i}")) == f"s{i}".encode()
            one_by_one = info_field(shared.port, "stats", "total_reads_processed") - reads
            assert len(writes) == 1 + 200
            assert pipelined <= 5, pipelined
            assert one_by_one >= 200, one_by_one
        finally:
            await conn.close()

    run(main())


def test_an_error_reply_is_a_value_and_leaves_its_neighbours_alone(shared: RedisServer) -> None:
    key = f"err{time.monotonic_ns()}"

    async def main() -> None:
        conn = connection(shared)
        try:
            client_id = await conn.call(cmd("CLIENT", "ID"))
            got = await asyncio.gather(
                conn.call(cmd("SET", key, "not-a-number")),
                conn.call(cmd("INCR", key)),
                conn.call(cmd("GET", key)),
                conn.call(cmd("NO-SUCH-COMMAND", "x")),
                conn.call(cmd("ECHO", "after")),
                conn.call(cmd("HGET", key, "field")),
                conn.call(cmd("EVALSHA", "0" * 40, 0)),
                conn.call(cmd("ECHO", "last")),
            )
            assert got[0] == b"OK"
            assert isinstance(got[1], hiredis.ReplyError)
            assert str(got[1]).startswith("ERR value is not an integer")
            assert got[2] == b"not-a-number"
            assert isinstance(got[3], hiredis.ReplyError)
            assert "unknown command" in str(got[3])
            assert got[4] == b"after"
            assert isinstance(got[5], hiredis.ReplyError)
            assert str(got[5]).startswith("WRONGTYPE")
            assert isinstance(got[6], hiredis.ReplyError)
            assert str(got[6]).startswith("NOSCRIPT")
            assert got[7] == b"last"
            # error replies do not cost the connection
            assert await conn.call(cmd("CLIENT", "ID")) == client_id
        finally:
            await conn.close()

    run(main())


def test_a_cancelled_caller_does_not_shift_later_replies(shared: RedisServer) -> None:
    queue = f"q{time.monotonic_ns()}"

    async def main() -> None:
        conn = connection(shared, timeout=10.0)
        try:
            client_id = await conn.call(cmd("CLIENT", "ID"))
            first = asyncio.ensure_future(conn.call(cmd("ECHO", "first")))
            blocked = asyncio.ensure_future(conn.call(cmd("BLPOP", queue, 0)))
            after = [asyncio.ensure_future(conn.call(cmd("ECHO", f"after-{i}")))
                     for i in range(20)]
            # Redis has answered `first` and is now blocked in BLPOP with the rest queued
            await until(lambda: first.done(), "the first reply")
            await until(lambda: info_field(shared.port, "clients", "blocked_clients") == 1,
                        "BLPOP to block")
            assert first.result() == b"first"
            blocked.cancel()
            await asyncio.sleep(0)
            assert blocked.cancelled()
            # now BLPOP's reply comes, for a caller that gave up; the others must not get it
            assert raw(shared.port, ("RPUSH", queue, "x")) == [1]
            got = await asyncio.gather(*after)
            assert got == [f"after-{i}".encode() for i in range(20)]
            assert raw(shared.port, ("LLEN", queue)) == [0]  # BLPOP did take it
            assert await conn.call(cmd("ECHO", "next")) == b"next"

            # many callers cancelled in the middle of a burst
            tasks = [asyncio.ensure_future(conn.call(cmd("ECHO", f"b{i}"))) for i in range(300)]
            await asyncio.sleep(0)  # all queued
            for task in tasks[::3]:
                task.cancel()
            kept = [t for i, t in enumerate(tasks) if i % 3]
            got = await asyncio.gather(*kept)
            assert got == [f"b{i}".encode() for i in range(300) if i % 3]
            assert all(t.cancelled() for t in tasks[::3])
            assert await conn.call(cmd("CLIENT", "ID")) == client_id  # never dropped
        finally:
            await conn.close()

    run(main())


# -- deadline ----------------------------------------------------------------------------------

def test_a_stalled_redis_fails_every_waiting_call_after_the_timeout(
        own: Callable[..., RedisServer]) -> None:
    """One timer for the connection: when the oldest call is overdue, every waiting call fails
    (also those sent later), the connection is dropped, and the next call uses a new one."""
    server = own()
    timeout = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(server, timeout=timeout, setup=[cmd("PING")])
        try:
            old_id = await conn.call(cmd("CLIENT", "ID"))
            server.pause()
            try:
                started = loop.time()
                first = [asyncio.ensure_future(conn.call(cmd("ECHO", f"a{i}")))
                         for i in range(50)]
                await asyncio.sleep(0.1)
                second = [asyncio.ensure_future(conn.call(cmd("ECHO", f"b{i}")))
                          for i in range(50)]
                results = await asyncio.gather(*first, *second, return_exceptions=True)
                elapsed = loop.time() - started
                assert all(isinstance(r, TimeoutError) for r in results), results[:3]
                assert timeout <= elapsed < timeout + SLACK, elapsed
            finally:
                server.resume()
            assert await conn.call(cmd("ECHO", "back")) == b"back"
            new_id = await conn.call(cmd("CLIENT", "ID"))
            assert new_id != old_id  # a new connection, not the stalled one
        finally:
            await conn.close()

    run(main())


def test_connecting_to_a_stalled_redis_is_bounded_and_the_next_call_starts_afresh(
        own: Callable[..., RedisServer]) -> None:
    """The connection attempt (TCP connect, then the setup command) is bounded by the caller's
    deadline; once Redis answers again, the next call connects, whatever happened to the
    attempt that timed out."""
    server = own()
    timeout = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(server, timeout=timeout, setup=[cmd("PING")])
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            conn.reconnect()  # the next call has to connect
            server.pause()  # the kernel still accepts the TCP connection; Redis never answers
            try:
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await conn.call(cmd("ECHO", "while-stalled"))
                assert timeout <= loop.time() - started < timeout + SLACK
            finally:
                server.resume()
            server.wait_ready()  # Redis answers PING again (on a socket of its own)
            started = loop.time()
            try:
                reply = await conn.call(cmd("ECHO", "back"))
            except TimeoutError as exc:
                reply = exc
            assert reply == b"back", (
                f"the first call after Redis came back got {reply!r} after "
                f"{loop.time() - started:.4f}s (its timeout is {timeout}s)")
        finally:
            await conn.close()

    run(main())


def test_a_call_past_its_own_deadline_argument_times_out(shared: RedisServer) -> None:
    """`call(..., deadline=)` is on the loop's clock and bounds that call, also when an earlier
    call (already answered) had a later deadline."""
    queue = f"dl{time.monotonic_ns()}"
    timeout = 2.0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(shared, timeout=timeout)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"  # deadline: `timeout` from now
            started = loop.time()
            link = conn._link
            with pytest.raises(TimeoutError):
                await conn.call(cmd("BLPOP", queue, 0), deadline=started + 0.2)
            elapsed = loop.time() - started
            assert 0.2 <= elapsed < 0.2 + 0.5, f"deadline 0.2s, TimeoutError after {elapsed:.2f}s"
            # it failed alone (sent with less than `timeout` left, so Redis is not known to be
            # stalled): the connection stays, the late reply is skipped, the next one is ours
            shared.command("RPUSH", queue, "late")
            assert await conn.call(cmd("ECHO", "fresh")) == b"fresh"
            assert conn._link is link and not link.lost
        finally:
            await conn.close()

    run(main())


def test_a_call_sent_late_fails_alone_and_the_calls_before_it_are_answered(
        shared: RedisServer) -> None:
    """A call sent with little of its deadline left (a retry after NOSCRIPT, a call after a
    slow connect) that Redis has not answered in time fails by itself; an earlier call that
    Redis is still working on is answered, and the connection stays. Only a call unanswered
    for a whole `timeout` means Redis is stalled (then all fail and the connection goes)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(shared, timeout=2.0)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            link = conn._link
            slow = asyncio.ensure_future(conn.call(cmd("DEBUG", "SLEEP", "0.3")))
            started = loop.time()
            with pytest.raises(TimeoutError):
                await conn.call(cmd("ECHO", "late"), deadline=started + 0.05)
            assert loop.time() - started < 0.05 + SLACK
            assert await slow == b"OK"
            assert await conn.call(cmd("ECHO", "next")) == b"next"
            assert conn._link is link and not link.lost
        finally:
            await conn.close()

    run(main())


def test_a_deadline_argument_on_a_fresh_connection(shared: RedisServer) -> None:
    """The same on a connection's first call: the deadline bounds connecting and the reply."""
    queue = f"dl{time.monotonic_ns()}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(shared, timeout=5.0)
        try:
            started = loop.time()
            with pytest.raises(TimeoutError):
                await conn.call(cmd("BLPOP", queue, 0), deadline=started + 0.2)
            assert 0.2 <= loop.time() - started < 0.2 + SLACK
            shared.command("RPUSH", queue, "late")  # its reply, skipped
            assert await conn.call(cmd("ECHO", "fresh")) == b"fresh"
        finally:
            await conn.close()

    run(main())


# -- lost connections --------------------------------------------------------------------------

def test_redis_killed_mid_wait_fails_the_calls_and_a_restart_needs_no_extra_step(
        own: Callable[..., RedisServer]) -> None:
    server = own()
    queue = "killed"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = connection(server, timeout=10.0)
        try:
            assert await conn.call(cmd("PING")) == b"PONG"
            blocked = asyncio.ensure_future(conn.call(cmd("BLPOP", queue, 0)))
            queued = [asyncio.ensure_future(conn.call(cmd("ECHO", f"q{i}"))) for i in range(10)]
            await until(lambda: info_field(server.port, "clients", "blocked_clients") == 1,
                        "BLPOP to block")
            started = loop.time()
            server.kill()
            results = await asyncio.gather(blocked, *queued, return_exceptions=True)
            assert all(isinstance(r, RedisConnectionLost | OSError) for r in results), results
            assert loop.time() - started < 2.0  # noticed at once, not at the 10 s deadline

            own(old=server)  # a new Redis on the same port
            assert await conn.call(cmd("SET", "restarted", "yes")) == b"OK"
            assert raw(server.port, ("GET", "restarted")) == [b"yes"]
        finally:
            await conn.close()

    run(main())


def test_an_idle_connection_notices_a_restart_and_the_next_call_succeeds(
        own: Callable[..., RedisServer]) -> None:
    server = own()

    def restart() -> None:
        server.kill()
        own(old=server)

    async def main() -> None:
        conn = connection(server, timeout=2.0)
        try:
            assert await conn.call(cmd("SET", "gen", "1")) == b"OK"
            link = conn._link
            assert link is not None
            await asyncio.to_thread(restart)  # the loop keeps running meanwhile, as when idle
            await until(lambda: link.lost, "the connection to notice the close")
            assert await conn.call(cmd("GET", "gen")) is None  # the new, empty Redis
            assert await conn.call(cmd("SET", "gen", "2")) == b"OK"
            assert raw(server.port, ("GET", "gen")) == [b"2"]
        finally:
            await conn.close()

    run(main())


def test_nothing_listening_fails_promptly_and_every_time() -> None:
    port = free_port()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = RedisConnection(parse(f"redis://127.0.0.1:{port}/0"), 5.0)
        try:
            for _ in range(3):
                started = loop.time()
                with pytest.raises(OSError):
                    await conn.call(cmd("PING"))
                assert loop.time() - started < 1.0
        finally:
            await conn.close()

    run(main())


def test_close_fails_later_calls(shared: RedisServer) -> None:
    async def main() -> None:
        conn = connection(shared)
        assert await conn.call(cmd("PING")) == b"PONG"
        await conn.close()
        for _ in range(2):
            with pytest.raises(RedisConnectionLost):
                await conn.call(cmd("PING"))
        # closing a connection that never connected
        idle = connection(shared)
        await idle.close()
        with pytest.raises(RedisConnectionLost):
            await idle.call(cmd("PING"))

    run(main())


def test_close_fails_calls_in_flight_as_connection_errors(shared: RedisServer) -> None:
    """Calls waiting when the connection is closed (an old runtime's limiter closed after a
    reload) fail as a lost connection, which the limiter handles (it catches Exception), not
    as asyncio.CancelledError, which would cancel the request that made them."""
    queue = f"closed{time.monotonic_ns()}"

    async def main() -> None:
        # waiting for a reply
        conn = connection(shared, timeout=10.0)
        assert await conn.call(cmd("PING")) == b"PONG"
        blocked = asyncio.ensure_future(conn.call(cmd("BLPOP", queue, 0)))
        await until(lambda: info_field(shared.port, "clients", "blocked_clients") == 1,
                    "BLPOP to block")
        await conn.close()
        outcome = (await asyncio.gather(blocked, return_exceptions=True))[0]
        assert isinstance(outcome, RedisConnectionLost), repr(outcome)

        # waiting for the connection to be made
        conn = connection(shared, timeout=10.0, setup=[cmd("PING")])
        connecting = asyncio.ensure_future(conn.call(cmd("PING")))
        await asyncio.sleep(0)  # the call has started the connection attempt and waits on it
        assert conn._connecting is not None
        await conn.close()
        try:
            outcome = await connecting
        except BaseException as exc:  # CancelledError included, to report it plainly
            outcome = exc
        assert isinstance(outcome, RedisConnectionLost), (
            f"a call connecting while close() ran got {outcome!r}")

    run(main())


# -- AUTH, SELECT and setup on every new connection --------------------------------------------

@dataclass
class PasswordRedis(RedisServer):
    """A Redis with `--requirepass`: its readiness check has to authenticate."""

    password: str = ""

    def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if raw(self.port, ("AUTH", self.password), ("PING",)) == [b"OK", b"PONG"]:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError("redis did not answer PING")


def test_password_and_database_from_the_url(own: Callable[..., RedisServer],
                                            tmp_path: Path) -> None:
    server = own(server=PasswordRedis(free_port(), tmp_path / "auth", (
        "--requirepass", "secret",
        "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"), password="secret"))
    base = f"127.0.0.1:{server.port}"

    async def main() -> None:
        conn = RedisConnection(parse(f"redis://:secret@{base}/3"), 2.0)
        try:
            assert await conn.call(cmd("SET", "where", "db3")) == b"OK"
            assert b" db=3 " in await conn.call(cmd("CLIENT", "INFO"))
            assert await conn.call(cmd("ACL", "WHOAMI")) == b"default"
            conn.reconnect()  # AUTH and SELECT again on the new connection
            assert await conn.call(cmd("GET", "where")) == b"db3"
        finally:
            await conn.close()
        # an ACL user, percent-encoded in the URL
        conn = RedisConnection(parse(f"redis://alice:s3cr%65t@{base}/4"), 2.0)
        try:
            assert await conn.call(cmd("ACL", "WHOAMI")) == b"alice"
            assert await conn.call(cmd("SET", "where", "db4")) == b"OK"
        finally:
            await conn.close()

    run(main())
    auth = ("AUTH", "secret")
    assert raw(server.port, auth, ("SELECT", "3"), ("GET", "where")) == [b"OK", b"OK", b"db3"]
    assert raw(server.port, auth, ("SELECT", "4"), ("GET", "where")) == [b"OK", b"OK", b"db4"]
    assert raw(server.port, auth, ("GET", "where")) == [b"OK", None]  # not in db 0


def test_a_wrong_password_raises_a_reply_error_instead_of_hanging(
        own: Callable[..., RedisServer], tmp_path: Path) -> None:
    server = own(server=PasswordRedis(free_port(), tmp_path / "auth", (
        "--requirepass", "secret"), password="secret"))
    base = f"127.0.0.1:{server.port}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for url in (f"redis://:wrong@{base}/0", f"redis://alice:secret@{base}/2"):
            conn = RedisConnection(parse(url), 5.0, setup=[cmd("PING")])
            try:
                for _ in range(2):  # and again: no half-made connection is kept
                    started = loop.time()
                    with pytest.raises(RedisReplyError, match="WRONGPASS"):
                        await conn.call(cmd("PING"))
                    assert loop.time() - started < 1.0
            finally:
                await conn.close()
        # no password at all: each command is answered NOAUTH (a reply, not an exception)
        conn = RedisConnection(parse(f"redis://{base}/0"), 5.0)
        try:
            reply = await conn.call(cmd("PING"))
            assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOAUTH")
        finally:
            await conn.close()

    run(main())


def test_setup_commands_run_on_every_new_connection(shared: RedisServer) -> None:
    script = f"return {time.monotonic_ns()}"
    sha = hashlib.sha1(script.encode()).hexdigest()
    value = int(script.split()[1])

    async def main() -> None:
        conn = connection(shared, setup=[cmd("SCRIPT", "LOAD", script)])
        try:
            assert await conn.call(cmd("EVALSHA", sha, 0)) == value
            assert raw(shared.port, ("SCRIPT", "FLUSH")) == [b"OK"]
            gone = await conn.call(cmd("EVALSHA", sha, 0))
            assert isinstance(gone, hiredis.ReplyError) and str(gone).startswith("NOSCRIPT")
            conn.reconnect()
            assert await conn.call(cmd("EVALSHA", sha, 0)) == value
        finally:
            await conn.close()
        # a setup command Redis refuses makes the connection attempt fail
        bad = connection(shared, setup=[cmd("SCRIPT", "LOAD", "this is not lua")])
        try:
            with pytest.raises(RedisReplyError, match="Error compiling script"):
                await bad.call(cmd("PING"))
        finally:
            await bad.close()

    run(main())


# -- the backend's NOSCRIPT reload -------------------------------------------------------------

def test_backend_reloads_its_script_after_script_flush(shared: RedisServer) -> None:
    tag = f"ns{time.monotonic_ns()}"
    policy = RateLimitPolicy(name="p", limit=3, period_ms=3_600_000, algorithm="fixed_window")
    key = f"gw:{{{tag}}}:p:f3600000"
    burst_policy = RateLimitPolicy(name="b", limit=5, period_ms=3_600_000,
                                   algorithm="fixed_window")
    burst_key = f"gw:{{{tag}b}}:b:f3600000"

    async def main() -> None:
        backend = RedisBackend(shared.url, 2.0)
        try:
            checks = Checks([(policy, key)])
            admitted = [(await backend.check(checks))[0]]
            assert raw(shared.port, ("SCRIPT", "FLUSH")) == [b"OK"]
            admitted += [(await backend.check(checks))[0] for _ in range(3)]
            assert admitted == [True, True, True, False]
            assert raw(shared.port, ("HGET", key, "b")) == [b"3"]  # Redis counted, once each

            # a burst that all meets NOSCRIPT at once
            assert raw(shared.port, ("SCRIPT", "FLUSH")) == [b"OK"]
            results = await asyncio.gather(
                *(backend.check(Checks([(burst_policy, burst_key)])) for _ in range(12)))
            assert sum(a for a, _ in results) == 5
            assert raw(shared.port, ("HGET", burst_key, "b")) == [b"5"]
        finally:
            await backend.close()

    run(main())
