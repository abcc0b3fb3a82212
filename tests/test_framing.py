"""What the gateway refuses in a request head, and how: llhttp's refusals (httptools, fed
directly) and the gateway's own checks (gateway/http/framing.py), then the same heads through
the connection layer (gateway/http/protocol.py) on an in-memory transport: the answer written
is the gateway's problem+json with the status the head deserves. No socket is opened.

These replace the tests of aiohttp's parser-error texts: the claim is the same (a long request
line is 414, a long field line or too many fields 431, an unsupported version 505, anything
else malformed 400), now pinned on the parser the gateway runs."""

from __future__ import annotations

import asyncio
import json

import httptools
import pytest
from multidict import CIMultiDict

from gateway.http.framing import (
    BAD_VERSION,
    DUPLICATE_HOST,
    FIELD_TOO_LONG,
    MALFORMED,
    MISSING_HOST,
    NOT_CHUNKED_LAST,
    TOO_MANY_FIELDS,
    UPGRADE_WITH_BODY,
    bare_cr_before_request,
    bare_crs,
    field_refusal,
    head_refusal,
    parse_failure,
    unfinished_head_refusal,
)
from gateway.http.protocol import Exchange, GatewayServer
from gateway.http.response import Answer
from tests.support.memory_transport import MemoryTransport


class _Sink:
    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp_error(data: bytes) -> str | None:
    """llhttp's error text for `data`, or None when it accepts it."""
    parser = httptools.HttpRequestParser(_Sink())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return None
    except httptools.HttpParserError as exc:
        return str(exc)
    return None


REFUSED_BY_LLHTTP = {
    "cl-and-te": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl-equal": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                          b"Content-Length: 5\r\n\r\nhello",
    "cl-plus": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    "te-chunked-identity": b"POST /x HTTP/1.1\r\nHost: a\r\n"
                           b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "duplicate-te": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET /x HTTP/1.1\r\nHost: a\r\nX-F: one\r\n two\r\n\r\n",
    "bare-lf": b"GET /x HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "nul-in-value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "lowercase-method": b"get /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "http-1.2": b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("data", REFUSED_BY_LLHTTP.values(), ids=REFUSED_BY_LLHTTP)
def test_llhttp_refuses(data: bytes) -> None:
    assert llhttp_error(data) is not None


LET_THROUGH_BY_LLHTTP = {
    "duplicate-host": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "missing-host": b"GET /x HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("data", LET_THROUGH_BY_LLHTTP.values(), ids=LET_THROUGH_BY_LLHTTP)
def test_llhttp_lets_through_what_the_gateway_checks_itself(data: bytes) -> None:
    # if llhttp starts refusing one of these, framing.py's check is belt and braces
    assert llhttp_error(data) is None


def test_llhttp_refuses_a_last_coding_other_than_chunked_only_after_the_head() -> None:
    # by then the connection layer has the request: framing.head_refusal checks it first
    class Heads(_Sink):
        headers_complete = False

        def on_headers_complete(self) -> None:
            self.headers_complete = True

    sink = Heads()
    with pytest.raises(httptools.HttpParserError):
        httptools.HttpRequestParser(sink).feed_data(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n")
    assert sink.headers_complete


def test_an_unsupported_version_is_505_anything_else_400() -> None:
    assert parse_failure(llhttp_error(REFUSED_BY_LLHTTP["http-1.2"]) or "") is BAD_VERSION
    assert parse_failure(llhttp_error(REFUSED_BY_LLHTTP["obs-fold"]) or "") is MALFORMED
    assert parse_failure(llhttp_error(b"\x16\x03\x01garbage\r\n\r\n") or "") is MALFORMED


def test_head_checks() -> None:
    assert head_refusal((1, 1), 2, False) is DUPLICATE_HOST
    assert head_refusal((1, 1), 0, False) is MISSING_HOST
    assert head_refusal((1, 0), 0, False) is None
    assert head_refusal((1, 1), 1, True) is UPGRADE_WITH_BODY
    assert head_refusal((1, 1), 1, False, "xchunked") is NOT_CHUNKED_LAST
    assert head_refusal((1, 1), 1, False, "chunked, identity") is NOT_CHUNKED_LAST
    assert head_refusal((1, 1), 1, False, "gzip, chunked") is None  # admission: 501
    assert head_refusal((1, 1), 1, False, "chunked ") is None


def test_field_bounds() -> None:
    assert field_refusal(b"X", b"a" * 97, 1, 100, 10) is None  # 1 + 2 + 97 = 100
    assert field_refusal(b"X", b"a" * 98, 1, 100, 10) is FIELD_TOO_LONG
    assert field_refusal(b"X", b"1", 11, 100, 10) is TOO_MANY_FIELDS
    assert unfinished_head_refusal(100 + 100 * 11, 100, 100, 10) is None
    assert unfinished_head_refusal(100 + 100 * 11 + 1, 100, 100, 10) is FIELD_TOO_LONG


# ---- the same heads through the connection layer ---------------------------------------------


async def ok(exchange: Exchange) -> None:
    exchange.send(Answer(200, body=b"ok"))


def answer_to(*pieces: bytes) -> tuple[int, dict, MemoryTransport]:
    async def run() -> MemoryTransport:
        server = GatewayServer(ok, header_timeout=5.0, max_line_size=100, max_field_size=100,
                               max_headers=5, error_headers=lambda: CIMultiDict(
                                   {"X-Content-Type-Options": "nosniff"}),
                               count_error=lambda status: None)
        conn = server()
        transport = MemoryTransport()
        conn.connection_made(transport)
        for piece in pieces:
            conn.data_received(piece)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        conn.connection_lost(None)
        return transport

    transport = asyncio.run(run())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if b"problem+json" in head else {}), transport


@pytest.mark.parametrize(("pieces", "status"), [
    ((b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",), 414),
    ((b"GET /" + b"a" * 60, b"a" * 60),  414),  # split: counted as it arrives
    ((b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200 + b"\r\n\r\n",), 431),
    ((b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % i for i in range(6)) + b"\r\n",), 431),
    ((b"GET / HTTP/1.1\r\nX: " + b"a" * 40, b"a" * 800),  431),  # a line that never ends
    ((b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",), 505),
    ((b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",), 400),
    ((b"GET / HTTP/1.1\r\n\r\n",), 400),
    ((b"\x16\x03\x01garbage\r\n\r\n",), 400),
], ids=["long-request-line", "long-request-line-split", "long-field-line", "too-many-fields",
        "unending-field-line", "http-1.2", "duplicate-host", "missing-host", "tls-hello"])
def test_a_refused_head_gets_the_gateways_answer_and_the_connection_ends(
        pieces: tuple[bytes, ...], status: int) -> None:
    got, problem, transport = answer_to(*pieces)
    assert got == status
    assert problem["status"] == status and problem["type"] == "about:blank"
    head = transport.written.split(b"\r\n\r\n")[0]
    assert b"X-Request-ID: " in head and b"X-Content-Type-Options: nosniff" in head
    assert b"Server:" not in head and b"Connection: close" in head
    assert b"aaaa" not in transport.written  # the input is never echoed
    assert transport.closed or transport.eof


def test_a_head_within_the_bounds_is_served() -> None:
    got, _, transport = answer_to(b"GET / HTTP/1.1\r\nHost: x\r\n"
                                  + b"".join(b"H%d: x\r\n" % i for i in range(4)) + b"\r\n")
    assert got == 200 and transport.written.endswith(b"\r\n\r\nok")
    assert not transport.closed


@pytest.mark.parametrize(("data", "found"), [
    (b"GET / HTTP/1.1\r\n", False), (b"", False),
    (b"\r\nGET", False), (b"\nGET", False), (b"\r\n\n\r\nGET", False),  # empty lines
    (b"\rGET", True), (b"\r\n\rGET", True), (b"\r\r\n", True),  # a bare CR among them
    (b"\r", None), (b"\r\n\r", None),  # a CR whose LF may be in the next read
])
def test_a_bare_cr_before_a_request_line_is_found(data: bytes, found: bool | None) -> None:
    assert bare_cr_before_request(data) is found


@pytest.mark.parametrize(("data", "count"), [
    (b"a\r\nb", 0), (b"a\rb", 1), (b"\r\r\n", 1), (b"\r\rG", 2),
    (b"a\r", 0), (b"", 0),  # a CR at the very end: its LF may come next
])
def test_bare_crs_are_counted(data: bytes, count: int) -> None:
    assert bare_crs(data) == count
