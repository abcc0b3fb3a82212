"""The gateway's upstream client (gateway/proxy/upstream_client.py): what aiohttp's ClientSession
gave the forwarder, and the hand-written client must give too.

Unit tests drive one UpstreamConnection through a transport double (no socket): the parser's
callbacks, framing, flow control and reuse rules. Integration tests run a gateway in front of
the test upstream (tests/support/upstream.py) or the recording upstream (an independent h11
parser that numbers the connections it accepted) over real sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvloop
from multidict import CIMultiDict

from gateway.proxy.errors import UpstreamBroken
from gateway.proxy.upstream_client import (
    KEEPALIVE_S,
    MAX_HEAD,
    READ_HIGH_WATER,
    KeepAlivePool,
    UpstreamConnection,
    UpstreamResponse,
    encode_head,
    keepalive_pools,
)
from gateway.settings.policy import UpstreamSettings, UpstreamTarget
from tests.support.client import request
from tests.support.metrics import value
from tests.support.processes import free_port, stop
from tests.support.recorder import start_recorder
from tests.support.upstream import PATTERN, UNTIL_CLOSE_PIECES

# --- a connection without a socket ---------------------------------------------------------


class Transport:
    """The part of an asyncio transport the connection uses, recording what it is asked."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: UpstreamConnection) -> None:
        self.loop = loop
        self.protocol = protocol
        self.written: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, lines) -> None:
        self.written.append(b"".join(lines))

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close


class Pool:
    """What a KeepAlivePool hears from its connections."""

    def __init__(self) -> None:
        self.open = 0
        self.idle: list[UpstreamConnection] = []

    def opened(self) -> None:
        self.open += 1

    def lost(self, conn: UpstreamConnection) -> None:
        self.open -= 1

    def checkin(self, conn: UpstreamConnection) -> None:
        self.idle.append(conn)


def connection(read_timeout: float = 5.0) -> tuple[UpstreamConnection, Transport, Pool]:
    loop = asyncio.get_running_loop()
    pool = Pool()
    conn = UpstreamConnection(loop, pool, read_timeout)  # type: ignore[arg-type]
    transport = Transport(loop, conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, pool


GET = b"GET / HTTP/1.1\r\nHost: u\r\n\r\n"


async def answered(conn: UpstreamConnection, *replies: bytes, head: bytes = GET,
                   head_only: bool = False) -> UpstreamResponse:
    """Send `head`; the upstream's `replies` arrive (one data_received each) once it is sent."""
    loop = asyncio.get_running_loop()
    for reply in replies:
        loop.call_soon(conn.data_received, reply)
    return await conn.send(head, None, head_only=head_only)


async def body_of(response: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in response])


def run(coro):
    return asyncio.run(coro)


def test_the_head_is_one_write_with_a_bytes_body() -> None:
    async def scenario() -> list[bytes]:
        conn, transport, _ = connection()
        head = encode_head("POST", "/a?b=1", CIMultiDict([("Host", "u"), ("Content-Length", "2")]))
        asyncio.get_running_loop().call_soon(
            conn.data_received, b"HTTP/1.1 204 No Content\r\n\r\n")
        (await conn.send(head, b"hi")).release()
        return transport.written

    assert run(scenario()) == [b"POST /a?b=1 HTTP/1.1\r\nHost: u\r\nContent-Length: 2\r\n\r\nhi"]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
def test_a_control_character_in_a_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        encode_head("GET", "/", CIMultiDict([("Host", "u"), ("X-A", value)]))


def test_the_head_is_given_as_sent_duplicates_in_order() -> None:
    async def scenario() -> UpstreamResponse:
        conn, _, _ = connection()
        response = await answered(conn, b"HTTP/1.1 299 Quite Custom\r\nSet-Cookie: a=1\r\n"
                                        b"x-twice: 1\r\nSet-Cookie: b=2\r\nX-Twice: 2\r\n"
                                        b"Content-Length: 0\r\n\r\n")
        response.release()
        return response

    response = run(scenario())
    assert (response.status, response.reason, response.version) == (299, "Quite Custom", (1, 1))
    assert response.headers == [("Set-Cookie", "a=1"), ("x-twice", "1"), ("Set-Cookie", "b=2"),
                                ("X-Twice", "2"), ("Content-Length", "0")]


def test_interim_responses_are_skipped() -> None:
    async def scenario() -> tuple[UpstreamResponse, bytes]:
        conn, _, pool = connection()
        response = await answered(
            conn, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        body = await body_of(response)
        response.release()
        assert pool.idle == [conn]
        return response, body

    response, body = run(scenario())
    assert (response.status, response.headers, body) == (
        200, [("Content-Length", "5")], b"final")


def test_a_chunked_body_arrives_whole_and_the_connection_is_reused() -> None:
    async def scenario() -> tuple[bytes, list[UpstreamConnection], UpstreamConnection]:
        conn, _, pool = connection()
        response = await answered(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"3\r\nabc\r\n", b"4;ext=1\r\ndefg\r\n0\r\n\r\n")
        body = await body_of(response)
        response.release()
        return body, pool.idle, conn

    body, idle, conn = run(scenario())
    assert body == b"abcdefg"
    assert idle == [conn] and conn.reused


def test_a_head_response_has_no_body_whatever_its_content_length() -> None:
    async def scenario() -> tuple[bytes, int, UpstreamResponse]:
        conn, _, pool = connection()
        response = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                                  head=b"HEAD / HTTP/1.1\r\nHost: u\r\n\r\n", head_only=True)
        body = await body_of(response)
        response.release()
        # the next exchange on it parses from a clean start
        again = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert await body_of(again) == b"ok"
        again.release()
        return body, len(pool.idle), response

    body, idle, response = run(scenario())
    assert body == b"" and response.headers == [("Content-Length", "1000")]
    assert idle == 2


def test_a_released_response_touches_nothing_of_the_next_exchange() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        conn, _, pool = connection()
        old = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold")
        old.release()
        new = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew")
        old.release()  # a second release of the old one must not end the new exchange
        stale_read = await body_of(old)
        body = await body_of(new)
        new.release()
        assert pool.idle == [conn, conn]
        return stale_read, body

    assert run(scenario()) == (b"", b"new")


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nSet-Cookie: smuggled=1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\nextra",
])
def test_bytes_after_the_response_keep_the_connection_from_the_pool(reply: bytes) -> None:
    async def scenario() -> tuple[int, bytes, list[UpstreamConnection], bool]:
        conn, _, pool = connection()
        response = await answered(conn, reply)
        body = await body_of(response)
        response.release()
        await asyncio.sleep(0)
        return response.status, body, pool.idle, conn.closed

    status, body, idle, closed = run(scenario())
    assert status in (204, 304) and body == b""
    assert idle == [] and closed


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nfoo",
    b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n",
])
def test_a_connection_that_answered_101_or_600_is_never_pooled(reply: bytes) -> None:
    async def scenario() -> tuple[int, list[UpstreamConnection], bool]:
        conn, _, pool = connection()
        response = await answered(conn, reply)
        response.release()  # even released as if relayed
        await asyncio.sleep(0)
        return response.status, pool.idle, conn.closed

    status, idle, closed = run(scenario())
    assert status in (101, 600) and idle == [] and closed


def test_a_body_without_length_or_chunks_ends_with_the_connection() -> None:
    async def scenario() -> tuple[bytes, list[UpstreamConnection]]:
        conn, transport, pool = connection()
        response = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                        b"until ", b"the end")
        asyncio.get_running_loop().call_soon(transport.close)  # the upstream closes
        body = await body_of(response)
        assert not response.keep_alive
        response.release()
        return body, pool.idle

    assert run(scenario()) == (b"until the end", [])


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nonly\r\n",
])
def test_a_body_that_breaks_off_is_an_error_not_an_end(reply: bytes) -> None:
    async def scenario() -> tuple[bytes, UpstreamBroken]:
        conn, transport, _ = connection()
        response = await answered(conn, reply)
        first = await response.__anext__()
        asyncio.get_running_loop().call_soon(transport.close)
        with pytest.raises(UpstreamBroken) as broken:
            await response.__anext__()
        response.release()
        return first, broken.value

    first, broken = run(scenario())
    assert first == b"only"
    assert (broken.failure.kind, broken.failure.status, broken.stale) == ("reset", 502, False)


@pytest.mark.parametrize("reply", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo Colon Here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
])
def test_a_malformed_head_is_a_protocol_failure(reply: bytes) -> None:
    async def scenario() -> UpstreamBroken:
        conn, _, _ = connection()
        with pytest.raises(UpstreamBroken) as broken:
            await answered(conn, reply)
        return broken.value

    assert run(scenario()).failure.kind == "protocol"


def test_a_head_beyond_the_bound_is_a_protocol_failure() -> None:
    async def scenario() -> UpstreamBroken:
        conn, _, _ = connection()
        field = b"X-Big: " + b"a" * 1000 + b"\r\n"
        with pytest.raises(UpstreamBroken) as broken:
            await answered(conn, b"HTTP/1.1 200 OK\r\n" + field * (MAX_HEAD // len(field) + 1))
        return broken.value

    assert "larger than" in run(scenario()).failure.detail


def test_a_reused_connection_closed_before_any_byte_is_stale() -> None:
    async def scenario() -> tuple[bool, bool]:
        conn, transport, _ = connection()
        first = await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        first.release()
        asyncio.get_running_loop().call_soon(transport.close)  # as the request goes out
        with pytest.raises(UpstreamBroken) as on_reused:
            await conn.send(GET, None)
        fresh, fresh_transport, _ = connection()
        asyncio.get_running_loop().call_soon(fresh_transport.close)
        with pytest.raises(UpstreamBroken) as on_fresh:
            await fresh.send(GET, None)
        return on_reused.value.stale, on_fresh.value.stale

    assert run(scenario()) == (True, False)


def test_reading_pauses_while_the_forwarder_lags_and_resumes_when_it_catches_up() -> None:
    async def scenario() -> tuple[bool, bool, int, bytes]:
        conn, transport, _ = connection()
        piece = b"x" * 65536
        pieces = READ_HIGH_WATER // len(piece) + 2
        response = await answered(
            conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces - 1):
            conn.data_received(piece)
        paused = not transport.reading
        received = b""
        while not transport.reading:
            received += await response.__anext__()
        conn.data_received(piece)
        received += await body_of(response)
        response.release()
        return paused, transport.reading, transport.pauses, hashlib.sha256(received).digest()

    paused, reading, pauses, digest = run(scenario())
    assert paused and reading and pauses == 1
    pieces = READ_HIGH_WATER // 65536 + 2
    assert digest == hashlib.sha256(b"x" * 65536 * pieces).digest()


def test_a_streamed_body_waits_for_the_upstream_to_drain() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        conn, transport, _ = connection()
        sent_while_paused: list[bytes] = []

        async def body() -> AsyncIterator[bytes]:
            yield b"one"
            conn.pause_writing()
            yield b"two"
            sent_while_paused.extend(transport.written)  # reached only after resume
            yield b"three"

        loop = asyncio.get_running_loop()
        loop.call_later(0.05, conn.resume_writing)
        loop.call_later(0.1, conn.data_received, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        response = await conn.send(b"POST / HTTP/1.1\r\nHost: u\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n", body(), chunked=True)
        response.release()
        return sent_while_paused, transport.written

    while_paused, written = run(scenario())
    assert b"".join(written).endswith(b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n")
    assert b"three" not in b"".join(while_paused)


def test_a_silent_upstream_times_out_after_the_read_timeout() -> None:
    async def scenario() -> tuple[UpstreamBroken, float]:
        conn, _, _ = connection(read_timeout=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamBroken) as broken:
            await conn.send(GET, None)
        return broken.value, loop.time() - started

    broken, took = run(scenario())
    assert (broken.failure.kind, broken.failure.status) == ("timeout", 504)
    assert 0.05 <= took < 1.0


def test_an_upstream_that_keeps_sending_is_not_timed_out() -> None:
    async def scenario() -> bytes:
        conn, _, _ = connection(read_timeout=0.1)
        loop = asyncio.get_running_loop()
        for i in range(1, 6):  # the whole answer takes 0.3 s, no gap reaches 0.1 s
            loop.call_later(0.05 * i, conn.data_received,
                            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" if i == 1 else b"x")
        response = await conn.send(GET, None)
        body = await body_of(response)
        response.release()
        return body

    assert run(scenario()) == b"xxxx"


# --- the keep-alive pool ---------------------------------------------------------------------


def pooled(limit: int = 512) -> tuple[KeepAlivePool, list[tuple[UpstreamConnection, Transport]]]:
    """A target's pool and three connections it made (without sockets), all idle."""
    loop = asyncio.get_running_loop()
    settings = UpstreamSettings(targets=(UpstreamTarget("http", "127.0.0.1", 1),),
                                max_connections=limit)
    pool = keepalive_pools(settings)[0]
    made = []
    for _ in range(3):
        conn = UpstreamConnection(loop, pool, 5.0)
        transport = Transport(loop, conn)
        conn.connection_made(transport)  # type: ignore[arg-type]
        pool.checkin(conn)
        made.append((conn, transport))
    return pool, made


def test_the_most_recently_used_idle_connection_is_taken_first() -> None:
    async def scenario() -> bool:
        pool, made = pooled()
        return [pool.take_idle() for _ in range(4)] == [c for c, _ in reversed(made)] + [None]

    assert run(scenario())


def test_an_idle_connection_the_upstream_closes_leaves_the_pool() -> None:
    async def scenario() -> tuple[int, UpstreamConnection | None, UpstreamConnection]:
        pool, made = pooled()
        second, last_transport = made[1][0], made[2][1]
        last_transport.close()  # the upstream ends it while idle
        await asyncio.sleep(0)
        return pool.idle_count, pool.take_idle(), second

    idle, taken, second = run(scenario())
    assert idle == 2 and taken is second


def test_idle_connections_expire_after_30_seconds() -> None:
    async def scenario() -> tuple[UpstreamConnection | None, list[bool]]:
        pool, made = pooled()
        for conn, _ in made:
            conn.idle_since -= KEEPALIVE_S
        return pool.take_idle(), [transport.closing for _, transport in made]

    taken, closed = run(scenario())
    assert taken is None and closed == [True, True, True]


def test_the_pool_keeps_no_more_idle_connections_than_max_connections() -> None:
    async def scenario() -> tuple[int, list[bool]]:
        pool, made = pooled(limit=2)
        return pool.idle_count, [transport.closing for _, transport in made]

    assert run(scenario()) == (2, [False, False, True])


# --- through a gateway, over sockets ------------------------------------------------------


@pytest.fixture
def recorder(tmp_path):
    rec = start_recorder(tmp_path)
    yield rec
    stop(rec.proc)


@pytest.mark.integration
def test_keep_alive_connections_are_reused(gateway_factory, recorder) -> None:
    gw = gateway_factory(recorder.url)
    connections = {request(gw.port, "GET", f"/k{i}").json()["conn"] for i in range(20)}
    assert len(connections) == 1, connections


@pytest.mark.integration
def test_a_connection_the_upstream_closed_while_idle_is_retried_on_a_fresh_one(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url, upstream_extra="retries: 0")
    first = request(gw.port, "GET", "/stale")
    second = request(gw.port, "GET", "/stale")  # the pooled connection: closed unanswered
    assert (first.status, second.status) == (200, 200)
    assert first.body != second.body  # answered on another connection
    # not for a method that may have had an effect: the POST on the pooled connection fails,
    # and that connection is gone for the next one
    assert request(gw.port, "POST", "/stale", body=b"").status == 502
    assert request(gw.port, "POST", "/stale", body=b"").status == 200


@pytest.mark.integration
def test_a_chunked_response_is_relayed_intact(gateway) -> None:
    size = 300_000
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", f"/chunked/{size}")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    expected = (PATTERN * (size // len(PATTERN) + 1))[:size]
    assert resp.status == 200 and resp.headers["Content-Length"] is None
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()


@pytest.mark.integration
def test_a_response_without_framing_is_read_until_the_upstream_closes(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url)
    for _ in range(2):  # the first one's connection was not pooled
        reply = request(gw.port, "GET", "/until-close")
        assert reply.status == 200
        assert reply.body == b"".join(UNTIL_CLOSE_PIECES)


@pytest.mark.integration
def test_an_interim_100_continue_is_skipped(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url)
    reply = request(gw.port, "GET", "/interim")
    assert (reply.status, reply.body, reply.headers["X-Final"]) == (200, b"final", "yes")


@pytest.mark.integration
def test_the_status_line_and_repeated_headers_reach_the_client_as_sent(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/as-sent")
    resp = conn.getresponse()
    assert (resp.status, resp.reason, resp.read()) == (299, "Quite Custom", b"ok")
    assert resp.headers.get_all("Set-Cookie") == ["a=1", "b=2; Path=/"]
    assert resp.headers.get_all("X-Twice") == ["first", "second"]
    conn.close()


@pytest.mark.integration
def test_a_malformed_response_head_is_502_of_kind_protocol(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url)
    reply = request(gw.port, "GET", "/bad-header")
    assert reply.status == 502
    assert value(gw, "gateway_upstream_errors_total", upstream=upstream.raw_url,
                 kind="protocol") == 1


@pytest.mark.integration
def test_a_refused_connection_is_502_of_kind_connect(gateway_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(dead, upstream_extra="retries: 0")
    reply = request(gw.port, "GET", "/x")
    assert reply.status == 502 and "connect" in reply.json()["detail"]
    assert value(gw, "gateway_upstream_errors_total", upstream=dead, kind="connect") == 1


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: a SYN to it is
    dropped, so a connect hangs until its timeout (the kernel's, or the gateway's)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        while True:  # fill the accept queue until a connect is left waiting
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            assert len(fillers) < 64, "the accept queue never filled"
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.integration
def test_a_connect_timeout_is_504(gateway_factory, unanswered_port: int) -> None:
    target = f"http://127.0.0.1:{unanswered_port}"
    gw = gateway_factory(target, upstream_extra="retries: 0\ntimeouts: {connect: 300ms}")
    reply = request(gw.port, "GET", "/x")
    assert reply.status == 504
    assert reply.json()["detail"] == "timed out connecting to the upstream"
    assert value(gw, "gateway_upstream_errors_total", upstream=target, kind="timeout") == 1


# --- the read timeout on a busy loop ---------------------------------------------------------

READ_TIMEOUT = 0.1
BUSY = 0.4  # one loop turn four read timeouts long


class BusyReader(asyncio.Protocol):
    """Keeps the loop busy in its poll phase, as parsing hundreds of requests does: a reply
    that arrives meanwhile is polled in the next turn, after the timers that fell due."""

    def data_received(self, data: bytes) -> None:
        time.sleep(BUSY)


def answer_after(listener: socket.socket, delay: float | None) -> None:
    """Accept one connection, read a request head, answer `delay` s later (None: never)."""
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        if delay is not None:
            time.sleep(delay)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.recv(1)  # until the client closes


async def exchange_while_busy(port: int) -> bytes | str:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    await loop.connect_accepted_socket(BusyReader, ours)
    target = UpstreamTarget("http", "127.0.0.1", port)
    pool = keepalive_pools(UpstreamSettings(targets=(target,), read_timeout=READ_TIMEOUT))[0]
    conn = await pool.connect()
    loop.call_later(0.01, theirs.send, b"x")  # busy from 10 ms after the request is sent
    try:
        response = await conn.send(GET, None)
        body = await body_of(response)
        response.release()
        return body
    except UpstreamBroken as exc:
        return exc.failure.kind
    finally:
        pool.close()
        theirs.close()


@pytest.mark.integration
@pytest.mark.parametrize(("delay", "outcome"), [(0.02, b"ok"), (None, "timeout")])
def test_the_read_timeout_is_the_upstreams_silence_not_the_loops_lag(delay, outcome) -> None:
    # the reply (20 ms) arrives while the loop is busy for 400 ms, past the 100 ms deadline:
    # it is read, not timed out; an upstream that never answers still times out
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        upstream = threading.Thread(target=answer_after, args=(listener, delay), daemon=True)
        upstream.start()
        assert uvloop.run(exchange_while_busy(listener.getsockname()[1])) == outcome
        upstream.join(5)
