"""Forwarding behaviour through a real gateway process in front of the test upstream."""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest

from tests.support.client import raw_exchange, request, upstream_saw
from tests.support.processes import Gateway, free_port

# The tests that take `gateway` only send it requests: they share one (conftest.py
# module_gateway), and one worker runs the module.
pytestmark = pytest.mark.xdist_group("proxy")


@pytest.fixture(scope="module")
def gateway(module_gateway: Gateway) -> Gateway:
    return module_gateway

GATEWAY_ADDED = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                 "x-real-ip", "x-request-id", "via"}


def test_upstream_receives_no_headers_the_client_did_not_send(gateway) -> None:
    raw = raw_exchange(gateway.port, b"GET /plain HTTP/1.1\r\nHost: example.test\r\n"
                                     b"Connection: close\r\n\r\n")
    body = raw.split(b"\r\n\r\n", 1)[1]
    names = {name.lower() for name, _ in json.loads(body)["headers"]}
    assert names == GATEWAY_ADDED


def test_spoofed_forwarded_for_from_untrusted_peer_is_replaced(gateway) -> None:
    reply = request(gateway.port, "GET", "/x", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "X-Forwarded-Proto": "https"})
    seen = upstream_saw(reply)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]


def test_forwarded_for_from_trusted_proxy_is_believed(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="trusted_proxies: [127.0.0.0/8]")
    seen = upstream_saw(request(gw.port, "GET", "/x", headers={"X-Forwarded-For": "6.6.6.6",
                                                               "X-Forwarded-Proto": "https"}))
    assert seen["x-real-ip"] == ["6.6.6.6"]
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]


def test_request_id_is_generated_sent_upstream_and_returned(gateway) -> None:
    reply = request(gateway.port, "GET", "/x", headers={"X-Request-ID": "client-chosen"})
    returned = reply.headers["X-Request-ID"]
    assert returned and returned != "client-chosen"
    assert upstream_saw(reply)["x-request-id"] == [returned]


def test_request_id_from_trusted_proxy_is_kept(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="trusted_proxies: [127.0.0.1/32]")
    reply = request(gw.port, "GET", "/x", headers={"X-Request-ID": "edge-42"})
    assert reply.headers["X-Request-ID"] == "edge-42"
    assert upstream_saw(reply)["x-request-id"] == ["edge-42"]


def test_host_is_rewritten_to_the_upstream_and_original_kept_in_forwarded_host(
    gateway, upstream
) -> None:
    seen = upstream_saw(request(gateway.port, "GET", "/x", headers={"Host": "shop.example"}))
    assert seen["host"] == [f"127.0.0.1:{upstream.port}"]
    assert seen["x-forwarded-host"] == ["shop.example"]


def test_content_length_framing_is_kept(gateway) -> None:
    body = b"a" * 5000
    reply = request(gateway.port, "POST", "/upload", body=body)
    seen = upstream_saw(reply)
    assert seen["content-length"] == ["5000"]
    assert "transfer-encoding" not in seen
    assert reply.json()["body_length"] == 5000


def _send_chunked(port: int, chunks: list[bytes]) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/upload", body=iter(chunks),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply


def test_small_chunked_request_body_is_received_whole_then_sent_with_its_length(
        gateway) -> None:
    # up to upstream.request_buffer (64KiB) the body is read before forwarding, as nginx does
    reply = _send_chunked(gateway.port, [b"x" * 1000, b"y" * 2000])
    assert reply["body_length"] == 3000
    names = {k.lower(): v for k, v in reply["headers"]}
    assert names["content-length"] == "3000"
    assert "transfer-encoding" not in names


def test_large_chunked_request_body_streams_chunked(gateway) -> None:
    chunks = [bytes([65 + i % 26]) * 16384 for i in range(8)]  # 128KiB > request_buffer
    reply = _send_chunked(gateway.port, chunks)
    assert reply["body_length"] == 8 * 16384
    assert reply["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    names = {k.lower() for k, _ in reply["headers"]}
    assert "transfer-encoding" in names and "content-length" not in names


def test_response_hop_by_hop_headers_are_stripped_and_via_added(gateway) -> None:
    reply = request(gateway.port, "GET", "/hop")
    names = reply.header_names()
    for name in ("x-upstream-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in names
    assert reply.headers["X-Kept"] == "yes"
    assert reply.headers["Via"] == "1.1 gateway"


def test_gateway_invents_no_server_or_content_type(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.raw_url)
    reply = request(gw.port, "GET", "/bare")
    assert reply.status == 200 and reply.body == b"ok"
    assert "server" not in reply.header_names()
    assert "content-type" not in reply.header_names()


def test_head_keeps_content_length_and_sends_no_body(gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("HEAD", "/download/1000")
    head = conn.getresponse()
    assert head.status == 200 and head.headers["Content-Length"] == "1000"
    assert head.read() == b""
    conn.request("GET", "/download/10")  # same connection: framing stayed intact
    assert conn.getresponse().read() == bytes(range(10))
    conn.close()


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses_keep_the_connection_usable(gateway, code: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", f"/status/{code}")
    resp = conn.getresponse()
    assert resp.status == code and resp.read() == b""
    assert resp.headers["ETag"] == '"v1"'
    assert "Transfer-Encoding" not in resp.headers
    conn.request("GET", "/download/5")
    assert conn.getresponse().read() == bytes(range(5))
    conn.close()


def problem(reply) -> dict:
    assert reply.headers["Content-Type"] == "application/problem+json"
    doc = reply.json()
    assert doc["status"] == reply.status
    return doc


def test_refused_upstream_is_502(gateway_factory) -> None:
    gw = gateway_factory(f"http://127.0.0.1:{free_port()}", wait_ready=True)
    reply = request(gw.port, "GET", "/x")
    assert reply.status == 502
    assert "connect" in problem(reply)["detail"]


def test_upstream_timeout_is_504(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, upstream_extra="timeouts: {connect: 1s, read: 300ms}")
    reply = request(gw.port, "GET", "/slow/2")
    assert reply.status == 504
    problem(reply)


@pytest.mark.parametrize("path", ["/reset", "/garbage"])
def test_upstream_broken_before_headers_is_502(gateway_factory, upstream, path: str) -> None:
    gw = gateway_factory(upstream.raw_url)
    reply = request(gw.port, "GET", path)
    assert reply.status == 502
    problem(reply)


@pytest.mark.parametrize("path", ["/truncate", "/truncate-chunked"])
def test_upstream_truncation_reaches_the_client_as_an_incomplete_message(
    gateway_factory, upstream, path: str
) -> None:
    gw = gateway_factory(upstream.raw_url)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()


def test_idempotent_requests_are_retried_on_connect_failure(gateway_factory, upstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # passive_health off: an ejected dead target would hide which requests are retried
    gw = gateway_factory([dead, upstream.url],
                         upstream_extra="retries: 1\npassive_health: {failures: 0}")
    statuses = [request(gw.port, "GET", "/x").status for _ in range(6)]
    posts = [request(gw.port, "POST", "/x", body=b"b").status for _ in range(6)]
    assert statuses == [200] * 6
    assert 502 in posts and 200 in posts


def test_websocket_frames_and_close_codes_are_relayed(gateway) -> None:
    import asyncio

    import aiohttp

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gateway.url}/ws", protocols=["chat.v1"],
                                          autoping=False) as ws:
                assert ws.protocol == "chat.v1"
                await ws.send_str("hello")
                assert (await ws.receive(5)).data == "hello"
                await ws.send_bytes(b"\x00\x01")
                assert (await ws.receive(5)).data == b"\x00\x01"
                await ws.ping(b"p1")
                pong = await ws.receive(5)
                assert pong.type is aiohttp.WSMsgType.PONG and pong.data == b"p1"
                await ws.send_str("close:4001")
                closing = await ws.receive(5)
                assert closing.type is aiohttp.WSMsgType.CLOSE
                assert closing.data == 4001

    asyncio.run(scenario())


def test_gateway_own_responses_do_not_advertise_its_software(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, routes="  - name: api\n    match: {path_prefix: /api/}")
    reply = request(gw.port, "GET", "/nothing-here")
    assert reply.status == 404
    assert "server" not in reply.header_names()
    doc = problem(reply)
    assert doc["title"] == "Not Found" and doc["type"] == "about:blank"
    assert reply.headers["X-Request-ID"]


def test_stalled_request_body_gets_408(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="timeouts: {body: 500ms}")
    raw = raw_exchange(gw.port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
                                b"only ten b", timeout=5)
    assert raw.startswith(b"HTTP/1.1 408 ")


def test_client_disconnect_cancels_the_upstream_request(gateway_factory, upstream) -> None:
    import socket as socket_module

    import psutil

    from tests.support.processes import eventually, wait_until

    gateway = gateway_factory(upstream.url)  # its own: its upstream connections are counted

    def upstream_conns() -> int:
        return sum(1 for c in psutil.Process(gateway.proc.pid).net_connections()
                   if c.raddr and c.raddr.port == upstream.port and c.status == "ESTABLISHED")

    sock = socket_module.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(b"GET /slow/5 HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_until(lambda: upstream_conns() == 1)
    sock.close()
    # /slow/5 answers after 5 s: a gateway that let the request run would hold it until then
    assert eventually(lambda: upstream_conns() == 0, timeout=3), \
        "the upstream request outlived the client that sent it"


def test_gzip_request_body_reaches_the_upstream_byte_for_byte(gateway) -> None:
    import gzip
    import hashlib

    compressed = gzip.compress(b"compress me " * 500, mtime=0)
    reply = request(gateway.port, "POST", "/upload", body=compressed,
                    headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    assert reply.json()["body_length"] == len(compressed)
    assert reply.json()["body_sha256"] == hashlib.sha256(compressed).hexdigest()
    assert upstream_saw(reply)["content-encoding"] == ["gzip"]
