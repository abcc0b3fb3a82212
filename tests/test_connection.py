"""The connection layer (gateway/http/protocol.py) driven on an in-memory transport: how many
writes an answer takes, pipelined answers in order, keep-alive by version, response framing,
body flow control. No socket: the handler is a small function of the Exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from gateway.http.protocol import BODY_HIGH, Connection, Exchange, GatewayServer
from gateway.http.response import Answer
from tests.support.memory_transport import MemoryTransport

Handler = Callable[[Exchange], Awaitable[None]]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def connect(handler: Handler) -> tuple[Connection, MemoryTransport]:
    """A connection of a server with `handler`, made on an in-memory transport (call from a
    running loop)."""
    server = GatewayServer(handler, header_timeout=5.0, error_headers=CIMultiDict,
                           count_error=lambda status: None)
    conn = server()
    transport = MemoryTransport()
    conn.connection_made(transport)
    return conn, transport


def serve(handler: Handler, *pieces: bytes,
          then: Callable[[Connection, MemoryTransport], Awaitable[None]] | None = None,
          ) -> MemoryTransport:
    async def run() -> MemoryTransport:
        conn, transport = connect(handler)
        for piece in pieces:
            conn.data_received(piece)
            await settle()
        if then is not None:
            await then(conn, transport)
        conn.connection_lost(None)
        return transport

    return asyncio.run(run())


async def writes(transport: MemoryTransport, count: int) -> None:
    """Until the connection has written `count` times (at most 5 s)."""
    async with asyncio.timeout(5):
        while len(transport.writes) < count:
            await asyncio.sleep(0.01)


async def target_answer(exchange: Exchange) -> None:
    exchange.send(Answer(200, (("Content-Type", "text/plain"),), exchange.target.encode()))


def test_a_whole_answer_is_one_write() -> None:
    transport = serve(target_answer, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"/a"
    assert b"Content-Length: 2\r\n" in head and b"Date: " in head
    assert b"Server" not in head and b"Connection" not in head


def test_pipelined_requests_are_answered_in_order() -> None:
    async def slow_first(exchange: Exchange) -> None:
        if exchange.target == "/1":
            await asyncio.sleep(0.05)
        await target_answer(exchange)

    transport = serve(slow_first, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
                      then=lambda conn, t: writes(t, 3))
    bodies = [w.partition(b"\r\n\r\n")[2] for w in transport.writes]
    assert bodies == [b"/1", b"/2", b"/3"]
    assert not transport.closed


def test_http_1_0_keeps_the_connection_only_when_asked() -> None:
    kept = serve(target_answer, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                 b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert [b"Connection: keep-alive\r\n" in w for w in kept.writes] == [True, True]
    assert not kept.closed
    closed = serve(target_answer, b"GET /a HTTP/1.0\r\n\r\n")
    assert b"Connection: close\r\n" in closed.writes[0] and closed.closed


def test_connection_close_ends_the_connection_after_the_answer() -> None:
    transport = serve(target_answer, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                     b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.writes) == 1 and b"Connection: close\r\n" in transport.writes[0]
    assert transport.closed


def stream(headers: CIMultiDict[str], chunks: list[bytes]) -> Handler:
    async def handler(exchange: Exchange) -> None:
        exchange.start(200, "OK", headers)
        for chunk in chunks:
            await exchange.write(chunk)
        await exchange.end()
    return handler


def test_a_streamed_answer_without_length_is_chunked_its_head_sent_with_the_first_bytes() -> None:
    transport = serve(stream(CIMultiDict(), [b"abc", b"de"]),
                      b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.writes) == 3
    assert b"Transfer-Encoding: chunked\r\n" in transport.writes[0]
    assert transport.writes[0].endswith(b"\r\n\r\n3\r\nabc\r\n")
    assert transport.writes[1:] == [b"2\r\nde\r\n", b"0\r\n\r\n"]


def test_a_streamed_answer_with_length_is_sent_as_is_and_head_gets_no_body() -> None:
    with_length = serve(stream(CIMultiDict({"Content-Length": "5"}), [b"abcde"]),
                        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(with_length.writes) == 1 and with_length.writes[0].endswith(b"\r\n\r\nabcde")
    assert b"Transfer-Encoding" not in with_length.writes[0]
    head = serve(stream(CIMultiDict({"Content-Length": "5"}), [b"abcde"]),
                 b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.written.endswith(b"Content-Length: 5\r\n" + head.written.split(
        b"Content-Length: 5\r\n", 1)[1].split(b"\r\n\r\n")[0] + b"\r\n\r\n")


def test_a_streamed_answer_to_http_1_0_without_length_ends_the_connection() -> None:
    transport = serve(stream(CIMultiDict(), [b"abc"]), b"GET /a HTTP/1.0\r\n\r\n")
    assert b"Transfer-Encoding" not in transport.written
    assert transport.written.endswith(b"\r\n\r\nabc") and transport.closed


def test_reading_pauses_while_a_body_waits_and_resumes_as_it_is_read() -> None:
    seen: dict[str, object] = {}
    release = asyncio.Event

    async def reader(exchange: Exchange) -> None:
        seen["gate"] = gate = release()
        await gate.wait()
        total = 0
        while chunk := await exchange.body.readany():
            total += len(chunk)
        seen["total"] = total
        exchange.send(Answer(200, body=b"ok"))

    size = 3 * BODY_HIGH
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size

    async def feed_body(conn: Connection, transport: MemoryTransport) -> None:
        pieces = size // 65536
        for _ in range(pieces - 2):  # the body is not all there yet: more would come
            conn.data_received(b"b" * 65536)
        seen["paused"] = transport.paused
        seen["gate"].set()  # type: ignore[attr-defined]
        await settle()
        seen["resumed"] = not transport.paused
        for _ in range(2):
            conn.data_received(b"b" * 65536)
        await writes(transport, 1)

    transport = serve(reader, head, then=feed_body)
    assert seen["paused"] is True and seen["resumed"] is True
    assert seen["total"] == size and transport.written.endswith(b"ok")


def test_a_keep_alive_answer_that_leaves_the_body_unread_drops_it_and_goes_on() -> None:
    transport = serve(target_answer, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
                      b"0123456789GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies = [w.partition(b"\r\n\r\n")[2] for w in transport.writes]
    assert bodies == [b"/a", b"/b"] and not transport.closed


def test_an_answer_that_ends_the_connection_with_the_body_unread_half_closes() -> None:
    async def refuse(exchange: Exchange) -> None:
        exchange.send(Answer(413, body=b"too big", close=True))

    transport = serve(refuse, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                              + b"x" * 1000)
    assert b"Connection: close\r\n" in transport.written
    assert transport.eof and not transport.closed  # lingering: the rest is read and dropped


def test_an_answer_without_100_continue_to_a_waiting_body_ends_the_connection() -> None:
    # the client may never send the body it announced: what follows could be either
    transport = serve(target_answer, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                     b"Expect: 100-continue\r\n\r\n")
    assert b"Connection: close\r\n" in transport.written and b"100 Continue" not in \
        transport.written


def test_a_keep_alive_answer_resumes_reading_a_body_it_drops() -> None:
    async def answer_at_once(exchange: Exchange) -> None:
        exchange.send(Answer(404, body=b"no"))

    size = 3 * BODY_HIGH

    async def rest(conn: Connection, transport: MemoryTransport) -> None:
        for _ in range(size // 65536 - 2):
            conn.data_received(b"b" * 65536)
        await settle()
        assert not transport.paused  # answered: the rest is read and dropped
        conn.data_received(b"b" * 131072 + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        await writes(transport, 2)

    transport = serve(answer_at_once,
                      b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size,
                      then=rest)
    assert len(transport.writes) == 2 and not transport.closed


def test_a_body_that_stops_arriving_is_answered_408_by_the_connection() -> None:
    """The deadline of a wait for body bytes is kept by the connection: the 408 is written
    from bytes encoded once, with the handler's request ID; the reader gets BodyTimeout
    saying it was answered, and the connection half-closes (the rest is read and dropped)."""
    from gateway.http.protocol import BodyTimeout

    seen: list[object] = []

    async def reader(exchange: Exchange) -> None:
        exchange.request_id = "req-1"
        try:
            while await exchange.body.readany(0.05):
                pass
        except BodyTimeout as exc:
            seen.append(exc.answered)
            seen.append(exchange.finished)

    async def then(conn: Connection, transport: MemoryTransport) -> None:
        await writes(transport, 1)
        await settle()

    transport = serve(reader, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
                      then=then)
    assert seen == [True, True]
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"X-Request-ID: req-1\r\n" in head and b"Connection: close\r\n" in head
    assert b"Content-Type: application/problem+json\r\n" in head and b"Date: " in head
    assert b'"status":408' in body and f"Content-Length: {len(body)}".encode() in head
    assert len(transport.writes) == 1 and transport.eof


def test_bytes_that_keep_coming_keep_the_body_wait_alive() -> None:
    """One timer for the connection, moved on by each wait: a body arriving in pieces, each
    within the timeout, is read whole although it takes longer than the timeout."""
    got: list[bytes] = []

    async def reader(exchange: Exchange) -> None:
        parts = []
        while chunk := await exchange.body.readany(0.15):
            parts.append(chunk)
        got.append(b"".join(parts))
        exchange.send(Answer(200))

    async def then(conn: Connection, transport: MemoryTransport) -> None:
        for piece in (b"bb", b"cc", b"dd"):
            await asyncio.sleep(0.1)
            conn.data_received(piece)
        await writes(transport, 1)

    transport = serve(reader, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\naa",
                      then=then)
    assert got == [b"aabbccdd"]
    assert transport.writes[0].startswith(b"HTTP/1.1 200 ")


def test_a_connection_cut_at_its_body_timeout_is_freed_by_reference_counting() -> None:
    """Nothing of a cut connection is left in a reference cycle (the parser holding the
    protocol, an exchange holding its connection, a kept exception's traceback holding the
    frames that read the body): with thousands cut at once, that garbage made the collector's
    full collections walk it all, stopping the loop for tens of milliseconds."""
    import gc
    import weakref

    from gateway.http.protocol import BodyTimeout

    refs: list[weakref.ref] = []

    async def reader(exchange: Exchange) -> None:
        with contextlib.suppress(BodyTimeout):
            while await exchange.body.readany(0.05):
                pass

    async def run() -> None:
        conn, transport = connect(reader)
        conn.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        await writes(transport, 1)
        await settle()
        conn.connection_lost(None)
        await settle()
        refs.append(weakref.ref(conn))

    gc.collect()
    gc.disable()
    try:
        asyncio.run(run())
        assert refs[0]() is None, gc.get_referrers(refs[0]())
    finally:
        gc.enable()
