"""Overload protection (issue 13): bounds on open connections and requests in progress per
worker, answered with 503 problem+json at once, counted by reason; the loop's lag exported."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

from tests.support.client import Conn, request
from tests.support.metrics import value
from tests.support.processes import wait_until

SLOW_ROUTES = """\
  - name: everything
    match: {path_prefix: /}
"""


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_connection_beyond_the_limit_gets_503_at_once_and_the_others_keep_working(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="limits: {max_connections: 8}")
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(8)]
    try:
        wait_until(lambda: request(gw.admin_port, "GET", "/health").status == 200)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as extra:
            answer = read_answer(extra)  # nothing sent: the gateway speaks first, then closes
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: 1" in head and b"application/problem+json" in head
        assert b"X-Request-ID: " in head and b"Server:" not in head
        assert json.loads(body)["status"] == 503
        # the held connections are served normally
        held[0].sendall(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert read_answer(held[0]).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: request(gw.port, "GET", "/x").status == 200)
    assert value(gw, "gateway_overload_refusals_total", reason="connections") >= 1


def test_requests_beyond_the_limit_in_progress_get_503_while_admitted_ones_complete(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="limits: {max_requests_in_progress: 3}")
    results: list[int] = []

    def slow() -> None:
        results.append(request(gw.port, "GET", "/slow/1.5", timeout=10).status)

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 3)
    started = time.monotonic()
    refused = request(gw.port, "GET", "/x")
    assert time.monotonic() - started < 1.0  # answered at once, not queued behind the others
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["detail"].startswith("the gateway is at its limit of requests")
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert request(gw.port, "GET", "/x").status == 200  # served normally once the load is gone
    assert value(gw, "gateway_overload_refusals_total", reason="requests") == 1


def test_a_body_that_arrives_while_the_gateway_is_full_gets_503_and_the_connection_stays_open(
        gateway_factory, upstream) -> None:
    """A request receiving a body of up to upstream.request_buffer is not counted in progress
    (it holds a connection, not upstream work); once its body is in it counts again, and
    beyond the limit it is refused like any other. Its body was read: the connection lives."""
    gw = gateway_factory(upstream.url, server_extra="limits: {max_requests_in_progress: 1}")
    results: list[int] = []
    with Conn(gw.port) as poster:
        poster.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nab")
        wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 1)
        slow = threading.Thread(target=lambda: results.append(
            request(gw.port, "GET", "/slow/3", timeout=10).status))
        slow.start()
        # admitted beside the body being received, and held at the upstream
        wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 2)
        poster.send(b"cde")
        refused = poster.read_response()
        assert refused.is_problem(503) and refused.header("Retry-After") == "1"
        assert refused.json()["detail"].startswith("the gateway is at its limit of requests")
        assert (refused.header("Connection") or "").lower() != "close"
        slow.join()
        poster.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert poster.read_response().status == 200  # on the same connection
    assert results == [200]
    assert value(gw, "gateway_overload_refusals_total", reason="requests") == 1


def test_requests_that_break_off_or_time_out_mid_body_leave_no_count_behind(
        gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="timeouts: {body: 1s}\n"
                                                    "limits: {max_requests_in_progress: 1}")
    with contextlib.ExitStack() as stack:
        posters = [stack.enter_context(Conn(gw.port)) for _ in range(3)]
        for poster in posters:  # 100 bytes announced, 1 sent
            poster.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nx")
        wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 3)
        assert request(gw.port, "GET", "/x").status == 200  # beside three bodies arriving
        posters[0].sock.close()  # two clients break off mid-body
        posters[1].sock.close()
        assert posters[2].read_response().is_problem(408)  # the third goes silent
    wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 0)
    # the count is back at zero: exactly one request in progress is admitted again
    slow = threading.Thread(target=lambda: request(gw.port, "GET", "/slow/1.5", timeout=10))
    slow.start()
    wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 1)
    assert request(gw.port, "GET", "/x").status == 503
    slow.join()
    assert request(gw.port, "GET", "/x").status == 200


def test_the_event_loop_lag_is_exported(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url)
    wait_until(lambda: value(gw, "gateway_event_loop_lag_seconds") is not None)
    assert 0 <= value(gw, "gateway_event_loop_lag_seconds") < 5


def test_a_refused_connection_whose_request_was_already_sent_still_reads_its_503(
        gateway_factory, upstream) -> None:
    """Refused at connect, the gateway half-closes and drops what the client sends: a request
    with a body already on its way (here 2 MiB, more than the socket buffers hold) does not
    reset the answer away."""
    gw = gateway_factory(upstream.url, server_extra="limits: {max_requests_in_progress: 1}")
    slow = threading.Thread(target=lambda: request(gw.port, "GET", "/slow/1.5", timeout=10))
    slow.start()
    wait_until(lambda: value(gw, "gateway_http_requests_in_flight") == 1)
    body = b"x" * (2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sender = threading.Thread(target=lambda: _send_quietly(sock, (
            b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)) + body))
        sender.start()
        answer = read_answer(sock)
        sender.join()
    slow.join()
    head, _, problem = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert json.loads(problem)["detail"].startswith("the gateway is at its limit of requests")
    assert value(gw, "gateway_overload_refusals_total", reason="requests") == 1
    assert value(gw, "gateway_http_requests_total", code="503", method="OTHER",
                 route="unmatched", source="gateway") == 1


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    # the gateway may close once the client has read the end of its answer
    with contextlib.suppress(OSError):
        sock.sendall(data)
