"""Hardening of the public listener, checked end to end over raw sockets.

Each test starts a real gateway process (in front of the echo test upstream) and speaks raw
HTTP/1.1 to it, so that the bytes the gateway receives are exactly the bytes written here: no
client library normalizes paths, merges headers or fixes framing on the way. Every socket has
a timeout of a few seconds, so a gateway that stops answering fails a test instead of hanging.
"""

from __future__ import annotations

import time

import pytest

from tests.support.client import Conn, Response, exchange
from tests.support.metrics import value
from tests.support.processes import Gateway

# The tests that take `gateway` only send it requests: they share one (conftest.py
# module_gateway), and one worker runs the module.
pytestmark = pytest.mark.xdist_group("hardening")


@pytest.fixture(scope="module")
def gateway(module_gateway: Gateway) -> Gateway:
    return module_gateway

TIMEOUT = 3.0  # longest wait for any single socket operation

# Small limits and timeouts so that tests can exceed them cheaply.
LIMITS = "limits: {max_body_size: 1KiB, max_header_size: 1KiB, max_headers: 20}"
MAX_BODY = 1024
MAX_HEADER = 1024
MAX_HEADERS = 20


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gw.test", *extra, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def upstream_header_names(resp: Response) -> set[str]:
    """Lower-case names of the headers the echo upstream received."""
    return {name.lower() for name, _ in resp.json()["headers"]}


# --------------------------------------------------------------------------------------------
# request targets


def test_absolute_form_target_is_400_problem_and_not_forwarded(gateway) -> None:
    # The echo upstream answers 200 for /x; the gateway must refuse before routing.
    assert exchange(gateway.port, get("/x")).status == 200
    resp = exchange(gateway.port, get("http://evil.example/x"))
    assert resp.is_problem(400)
    assert resp.header("Via") is None  # a relayed upstream answer would carry Via
    assert "raw_path" not in resp.json()


@pytest.mark.parametrize(("target", "upstream_path"), [
    ("/a/%2e%2e/b//c/./d", "/b/c/d"),
    ("/x/%41", "/x/A"),
    ("/x/a%20b", "/x/a%20b"),
    ("/x?a=%2e%2e/y&b=%41&c=%2F//z", "/x?a=%2e%2e/y&b=%41&c=%2F//z"),
], ids=["dot-segments-and-slashes", "unreserved-decoded", "space-escape-kept", "query-unchanged"])
def test_upstream_receives_the_normalized_path(gateway, target: str, upstream_path: str) -> None:
    resp = exchange(gateway.port, get(target))
    assert resp.status == 200
    assert resp.json()["raw_path"] == upstream_path


@pytest.mark.parametrize("target", [
    "/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00b", "/a%252e", "/..;/x", "/a%zz",
], ids=["enc-slash", "enc-slash-lower", "enc-backslash", "raw-backslash", "enc-nul",
        "double-encoding", "dotdot-semicolon", "malformed-escape"])
def test_ambiguous_path_is_400_problem(gateway, target: str) -> None:
    resp = exchange(gateway.port, get(target))
    assert resp.is_problem(400)
    assert resp.header("Via") is None


# --------------------------------------------------------------------------------------------
# request smuggling shapes


SMUGGLING = {
    "cl-and-te": b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl-equal": b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                          b"Content-Length: 5\r\n\r\nhello",
    "te-xchunked": b"POST /x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n"
                   b"0\r\n\r\n",
    "te-chunked-identity": b"POST /x HTTP/1.1\r\nHost: gw.test\r\n"
                           b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET /x HTTP/1.1\r\nHost: gw.test\r\nX-Folded: one\r\n two\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_smuggling_shape_is_400_and_connection_closed(gateway, request_bytes: bytes) -> None:
    with Conn(gateway.port) as conn:
        conn.send(request_bytes)
        resp = conn.read_response()
        assert resp.status == 400
        assert resp.header("Via") is None
        assert conn.closed_within(TIMEOUT)


# --------------------------------------------------------------------------------------------
# size limits


@pytest.fixture
def limited(gateway_factory, upstream):
    return gateway_factory(upstream.url, server_extra=LIMITS)


def test_content_length_over_limit_is_413_before_the_body(limited) -> None:
    with Conn(limited.port) as conn:
        conn.send(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000000000\r\n\r\n")
        resp = conn.read_response()  # not a byte of the body has been sent
    assert resp.is_problem(413)


def test_chunked_body_over_limit_is_413(limited) -> None:
    piece = 256
    with Conn(limited.port) as conn:
        conn.send(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:  # the gateway may answer (and stop reading) before the whole body is sent
            for _ in range(2 * MAX_BODY // piece):
                conn.send(b"%x\r\n" % piece + b"b" * piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass
        resp = conn.read_response()
    assert resp.is_problem(413)


def test_header_line_over_max_header_size_is_431(limited) -> None:
    resp = exchange(limited.port, get("/x", "X-Long: " + "a" * (MAX_HEADER + 100)))
    assert resp.is_problem(431)


def test_more_headers_than_max_headers_is_431(limited) -> None:
    # aiohttp counts header fields (not the request line) and refuses more than max_headers;
    # get() adds Host and Connection.
    extra = [f"X-H{i}: 1" for i in range(MAX_HEADERS - 1)]
    resp = exchange(limited.port, get("/x", *extra))
    assert resp.is_problem(431)


def test_exactly_max_headers_is_accepted(limited) -> None:
    extra = [f"X-H{i}: 1" for i in range(MAX_HEADERS - 2)]
    assert exchange(limited.port, get("/x", *extra)).status == 200


def test_request_line_over_max_header_size_is_414(limited) -> None:
    resp = exchange(limited.port, get("/" + "a" * (MAX_HEADER + 100)))
    assert resp.is_problem(414)


# --------------------------------------------------------------------------------------------
# timeouts


def test_trickled_request_head_is_cut_off_at_the_header_timeout(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="timeouts: {header: 1s, idle: 30s}")
    with Conn(gw.port) as conn:
        start = time.monotonic()
        conn.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\n")
        answer = None
        while time.monotonic() - start < 4.0:
            try:
                conn.send(b"X")
            except OSError:
                answer = b""
                break
            conn.sock.settimeout(0.3)  # one byte every 0.3 s, waiting on the socket
            try:
                answer = conn.sock.recv(65536)
                break
            except TimeoutError:
                continue
            except ConnectionResetError:
                answer = b""
                break
        elapsed = time.monotonic() - start
    assert answer is not None, "the gateway kept reading the trickled head for 4 s"
    assert not answer.startswith(b"HTTP/1.1 200")
    assert elapsed < 3.0
    assert value(gw, "gateway_client_timeouts_total", phase="header") == 1


def test_idle_keep_alive_connection_is_closed(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="timeouts: {header: 10s, idle: 1s}")
    with Conn(gw.port) as conn:
        conn.send(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert (resp.header("Connection") or "").lower() != "close"
        waited = conn.seconds_until_closed(4.0)
    assert waited is not None, "idle keep-alive connection still open after 4 s"


def test_header_timeout_does_not_cut_off_a_request_being_answered(
        gateway_factory, upstream) -> None:
    # The head arrived in time; the upstream is merely slow. The header timeout must not fire
    # while the request is being answered (here: a request with a body, upstream takes 1.5 s).
    gw = gateway_factory(upstream.url,
                         server_extra="timeouts: {header: 1s, idle: 30s, body: 5s}")
    with Conn(gw.port, timeout=4.0) as conn:
        conn.send(b"GET /slow/1.5 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                  b"Connection: close\r\n\r\nhello")
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"slow done"


def test_keep_alive_after_a_body_waits_for_idle_not_header_timeout(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="timeouts: {header: 1s, idle: 10s}")
    with Conn(gw.port, timeout=4.0) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello")
        assert conn.read_response().status == 200
        conn.sock.settimeout(1.6)  # longer than the header timeout
        with pytest.raises(TimeoutError):
            conn.sock.recv(1)  # nothing arrives and the server does not close
        conn.sock.settimeout(4.0)
        conn.send(b"GET /again HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        assert conn.read_response().status == 200


# --------------------------------------------------------------------------------------------
# Expect


def test_expect_100_continue_is_answered_before_the_body(gateway) -> None:
    with Conn(gateway.port) as conn:
        conn.send(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = conn.read_response()  # the body has not been sent yet
        assert interim.status == 100
        assert interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
        conn.send(b"hello")
        final = conn.read_response()
    assert final.status == 200
    assert final.json()["body_length"] == 5


def test_expect_100_continue_without_route_is_404_without_continue(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, routes="  - name: api\n    match: {path_prefix: /api/}\n")
    with Conn(gw.port) as conn:
        conn.send(b"POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        resp = conn.read_response()
    assert resp.status == 404
    assert b"100 Continue" not in resp.raw


def test_unknown_expectation_is_417(gateway) -> None:
    resp = exchange(gateway.port, b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n"
                                  b"Expect: something\r\n\r\n")
    assert resp.is_problem(417)


# --------------------------------------------------------------------------------------------
# upgrades and methods


def test_h2c_upgrade_is_not_forwarded(gateway) -> None:
    resp = exchange(gateway.port, b"GET /x HTTP/1.1\r\nHost: gw.test\r\n"
                                  b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                  b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert resp.status == 200
    seen = upstream_header_names(resp)
    assert "upgrade" not in seen
    assert "http2-settings" not in seen
    assert "connection" not in seen


def test_websocket_upgrade_on_route_without_websocket_is_403(gateway) -> None:
    resp = exchange(gateway.port, b"GET /chat HTTP/1.1\r\nHost: gw.test\r\n"
                                  b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                  b"Sec-WebSocket-Version: 13\r\n"
                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert resp.is_problem(403)


def test_trace_is_405(gateway) -> None:
    resp = exchange(gateway.port, b"TRACE /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert resp.is_problem(405)
    assert resp.header("Via") is None


def test_connect_is_refused_and_not_forwarded(gateway) -> None:
    # Authority-form is refused by the target check (400) before the method check (405).
    resp = exchange(gateway.port,
                    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert resp.status in (400, 405)
    assert resp.is_problem(resp.status)
    assert resp.header("Via") is None


def test_connect_with_origin_form_target_is_405(gateway) -> None:
    resp = exchange(gateway.port, b"CONNECT /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert resp.is_problem(405)
    assert resp.header("Via") is None


# --------------------------------------------------------------------------------------------
# error bodies


def test_parse_error_body_does_not_echo_the_input(gateway) -> None:
    marker = "MARKER-7f3a9c"
    resp = exchange(gateway.port, get("/x", f"X-Bad {marker}: v"))
    assert resp.is_problem(400)
    assert marker.encode() not in resp.body
