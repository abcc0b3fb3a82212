"""Sentry: events reach a local server speaking Sentry's envelope protocol.

The gateway runs with SENTRY_DSN pointing at a small HTTP server in this test process that
records every envelope it receives (real sentry-sdk, real HTTP; no mock)."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.client import request
from tests.support.processes import free_port, start_gateway, stop, wait_until

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


class Envelopes:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []  # (item type, payload)
        self.lock = threading.Lock()

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [payload for t, payload in self.items if t == kind]


@pytest.fixture
def sentry_server():
    store = Envelopes()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            encoding = self.headers.get("Content-Encoding")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "br":  # what sentry-sdk sends when the brotli module is installed
                import brotli
                body = brotli.decompress(body)
            lines = body.split(b"\n")
            i = 1  # line 0 is the envelope header
            while i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                header = json.loads(lines[i])
                payload = lines[i + 1] if i + 1 < len(lines) else b"{}"
                if header.get("type") in ("event", "transaction"):
                    with store.lock:
                        store.items.append((header["type"], json.loads(payload)))
                i += 2
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store.dsn = f"http://publickey@127.0.0.1:{server.server_address[1]}/1"
    yield store
    server.shutdown()


ROUTES = """  - name: health
    match: {path: /health}
  - name: login
    match: {path: /login}
    rate_limits: [login]
  - name: api
    match: {path_prefix: /}"""


def sentry_gateway(tmp_path, upstream_url: str, dsn: str):
    return start_gateway(tmp_path, upstream_url, routes=ROUTES,
                         top_extra="rate_limits:\n  login: {limit: 1, per: 1h}\n",
                         upstream_extra="retries: 0",
                         env={"SENTRY_DSN": dsn, "SENTRY_TRACES_SAMPLE_RATE": "1.0",
                              "SENTRY_PROFILES_SAMPLE_RATE": "0"})


def test_upstream_failure_is_an_event_grouped_by_upstream_and_kind(tmp_path,
                                                                   sentry_server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = sentry_gateway(tmp_path, dead, sentry_server.dsn)
    try:
        reply = request(gw.port, "GET", "/x")
        assert reply.status == 502
        wait_until(lambda: sentry_server.of("event"), timeout=10)
    finally:
        stop(gw.proc)
    event = sentry_server.of("event")[0]
    assert event["tags"]["request_id"] == reply.headers["X-Request-ID"]
    assert event["tags"]["kind"] == "connect" and event["tags"]["upstream"] == dead
    assert event["fingerprint"] == ["upstream-failure", dead, "connect"]
    assert event["environment"] == "test" and event["release"].startswith("gateway@")


def test_429_is_never_an_event_and_health_is_never_a_transaction(tmp_path, upstream,
                                                                  sentry_server) -> None:
    gw = sentry_gateway(tmp_path, upstream.url, sentry_server.dsn)
    try:
        assert [request(gw.port, "GET", "/login").status for _ in range(3)] == [200, 429, 429]
        assert request(gw.port, "GET", "/health").status == 200
        assert request(gw.port, "GET", "/api/x").status == 200
        wait_until(lambda: any(t["transaction"] == "GET api"
                               for t in sentry_server.of("transaction")), timeout=10)
        stop(gw.proc)  # flushes what is queued
    finally:
        stop(gw.proc)
    names = [t["transaction"] for t in sentry_server.of("transaction")]
    assert "GET health" not in names
    assert names.count("GET login") == 3  # the 429s are traced, not reported as errors
    assert sentry_server.of("event") == []


def test_trace_headers_go_to_the_upstream(tmp_path, upstream, sentry_server) -> None:
    from tests.support.client import upstream_saw
    gw = sentry_gateway(tmp_path, upstream.url, sentry_server.dsn)
    try:
        seen = upstream_saw(request(gw.port, "GET", "/api/x"))
    finally:
        stop(gw.proc)
    assert seen["sentry-trace"][0].count("-") == 2


def test_no_dsn_means_no_sentry(gateway, sentry_server) -> None:
    request(gateway.port, "GET", "/x")
    import urllib.request

    from tests.support.client import upstream_saw
    seen = upstream_saw(request(gateway.port, "GET", "/x"))
    assert "sentry-trace" not in seen
    assert sentry_server.items == []
    assert urllib.request.urlopen(gateway.admin_url + "/health", timeout=5).status == 200


def test_gateway_exceptions_are_reported_with_request_id_and_route(sentry_server,
                                                                   monkeypatch) -> None:
    """In process: a fault injected into admission must reach Sentry with its request id."""
    import asyncio

    import aiohttp
    import sentry_sdk

    from gateway import handler as handler_module
    from gateway.config import load_policy
    from gateway.handler import Handler
    from gateway.http.protocol import GatewayServer
    from gateway.observability.sentry import SentrySettings, reporter
    from gateway.runtime import Runtime
    from tests.support.processes import ROOT

    def boom(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(handler_module, "plan", boom)
    loaded = load_policy(ROOT / "policies" / "development.yaml", {})

    async def scenario() -> str:
        handler = Handler(Runtime.build(loaded),
                          reporter(SentrySettings(sentry_server.dsn, 0.0, 0.0), "test", []))
        server = GatewayServer(handler, header_timeout=5.0, error_headers=handler.error_headers,
                               count_error=handler.protocol_error)
        listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/x") as resp:
                assert resp.status == 500
        listener.close()
        await server.shutdown(1.0)
        await handler.runtime.pool.close()
        return ""

    asyncio.run(scenario())
    sentry_sdk.flush(5)
    sentry_sdk.get_client().close()
    events = sentry_server.of("event")
    assert len(events) == 1
    event = events[0]
    assert event["exception"]["values"][0]["value"] == "injected fault"
    assert len(event["tags"]["request_id"]) == 36 and event["tags"]["route"] == "unmatched"
