"""Metrics and access log after known traffic: exact counts per label set, one worker and
several (summed, and not reset when a worker is replaced)."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from tests.support.client import request
from tests.support.metrics import samples, scrape
from tests.support.processes import free_port, run_shipped, start_gateway, stop, wait_until

ROUTES = """  - name: login
    match: {path: /login, methods: [POST]}
    rate_limits: [login]
  - name: all
    match: {path_prefix: /}"""
TOP = """rate_limits:
  login: {limit: 2, per: 1h}
cors:
  default: {allow_origins: ["https://app.example.com"], allow_methods: [POST]}
"""


def requests_total(gw) -> dict[tuple[str, str, str, str], float]:
    return {(d["route"], d["method"], d["code"], d["source"]): v
            for labels, v in samples(gw, "gateway_http_requests_total").items()
            for d in [dict(labels)]}


def known_traffic(port: int) -> None:
    for _ in range(3):
        request(port, "POST", "/login", body=b"x")  # 200, 200, 429
    request(port, "GET", "/x")  # 200
    request(port, "OPTIONS", "/login", headers={  # preflight, answered by the gateway
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    request(port, "PROPFIND", "/x")  # a non-standard (WebDAV) method: label OTHER


def test_request_counts_per_label_set(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, routes=ROUTES, top_extra=TOP)
    known_traffic(gw.port)
    # the preflight is answered by the gateway and spends none of the login quota
    assert requests_total(gw) == {
        ("login", "POST", "200", "upstream"): 2,
        ("login", "POST", "429", "gateway"): 1,
        ("login", "OPTIONS", "204", "gateway"): 1,
        ("all", "GET", "200", "upstream"): 1,
        ("all", "OTHER", "200", "upstream"): 1,
    }
    decisions = samples(gw, "gateway_ratelimit_decisions_total")
    assert decisions[(("decision", "allowed"), ("policy", "login"), ("route", "login"))] == 2
    assert decisions[(("decision", "limited"), ("policy", "login"), ("route", "login"))] == 1
    assert samples(gw, "gateway_http_requests_in_flight") == {(): 0.0}
    buckets = samples(gw, "gateway_http_request_duration_seconds_bucket")
    assert buckets[(("le", "0.2"), ("method", "GET"), ("route", "all"))] == 1


def test_preflight_and_502_are_counted_as_gateway_answers(gateway_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(dead, routes=ROUTES, top_extra=TOP, upstream_extra="retries: 0")
    request(gw.port, "OPTIONS", "/x", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    request(gw.port, "GET", "/x")
    assert requests_total(gw) == {("all", "OPTIONS", "204", "gateway"): 1,
                                  ("all", "GET", "502", "gateway"): 1}
    errors = samples(gw, "gateway_upstream_errors_total")
    assert errors == {(("kind", "connect"), ("upstream", dead)): 1}


def test_unroutable_and_unparsable_requests_are_unmatched(gateway_factory, upstream) -> None:
    from tests.support.client import raw_exchange
    gw = gateway_factory(upstream.url, routes="  - name: api\n    match: {path_prefix: /api/}")
    request(gw.port, "GET", "/nope")
    raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                          b"Content-Length: 1\r\n\r\n")
    assert requests_total(gw) == {("unmatched", "GET", "404", "gateway"): 1,
                                  ("unmatched", "OTHER", "400", "gateway"): 1}


def test_openmetrics_by_content_negotiation(gateway) -> None:
    text, content_type = scrape(gateway, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    plain, plain_type = scrape(gateway)
    assert plain_type.startswith("text/plain") and "# EOF" not in plain


def test_workers_are_summed_in_one_scrape_and_survive_a_restart(gateway_factory,
                                                                 upstream) -> None:
    gw = gateway_factory(upstream.url, args=("--workers", "2"))
    supervisor = psutil.Process(gw.proc.pid)
    wait_until(lambda: len(supervisor.children()) == 2)
    for _ in range(40):  # new connections: spread over both workers
        assert request(gw.port, "GET", "/x").status == 200
    for _ in range(20):  # any worker's scrape must show the sum
        assert requests_total(gw)[("everything", "GET", "200", "upstream")] == 40
    victim = supervisor.children()[0].pid
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(supervisor.children()) == 2
               and victim not in {p.pid for p in supervisor.children()}, timeout=15)
    wait_until(lambda: _scrapes(gw))
    for _ in range(10):  # the dead worker's counts are still in the sum
        assert requests_total(gw)[("everything", "GET", "200", "upstream")] == 40


def _scrapes(gw) -> bool:
    try:
        scrape(gw)
        return True
    except OSError:
        return False


def test_access_log_one_json_line_per_request(tmp_path, upstream) -> None:
    gw = run_shipped("development.yaml", upstream.url, tmp_path)
    try:
        first = request(gw.port, "GET", "/api/campaigns?x=1",
                        headers={"X-Forwarded-For": "6.6.6.6"})
        request(gw.port, "GET", "/health")  # the health route is not logged by default
        wait_until(lambda: '"route":"api"' in gw.log_text())
    finally:
        stop(gw.proc)
    lines = [json.loads(line) for line in gw.log_text().splitlines() if line.startswith("{")]
    assert [entry["route"] for entry in lines] == ["api"]
    entry = lines[0]
    assert entry["method"] == "GET" and entry["path"] == "/api/campaigns"
    assert entry["status"] == 200 and entry["source"] == "upstream"
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["bytes_out"] == len(first.body)  # the body, not the headers
    assert entry["duration_ms"] >= entry["upstream_ms"] > 0
    assert len(entry["request_id"]) == 36 and entry["limited_by"] is None


def test_access_log_names_the_limit_that_refused(tmp_path, upstream) -> None:
    gw = start_gateway(tmp_path, upstream.url, routes=ROUTES, top_extra=TOP)
    try:
        for _ in range(3):
            request(gw.port, "POST", "/login", body=b"x")
        wait_until(lambda: gw.log_text().count('"route":"login"') == 3)
    finally:
        stop(gw.proc)
    last = [json.loads(x) for x in gw.log_text().splitlines() if x.startswith("{")][-1]
    assert (last["status"], last["limited_by"], last["source"]) == (429, ["login"], "gateway")


def test_websocket_sessions_are_counted_but_not_timed(gateway) -> None:
    import asyncio

    import aiohttp

    async def session() -> None:
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(f"{gateway.url}/ws") as ws:
                await ws.send_str("hi")
                await ws.receive(5)

    asyncio.run(session())
    wait_until(lambda: ("ws", "GET", "101", "upstream") in requests_total(gateway))
    assert requests_total(gateway)[("ws", "GET", "101", "upstream")] == 1
    counts = samples(gateway, "gateway_http_request_duration_seconds_count")
    assert (("method", "GET"), ("route", "ws")) not in counts


def test_a_scrape_skips_a_metrics_file_a_starting_worker_has_not_sized_yet(tmp_path) -> None:
    """With --workers N, a worker that is starting has created its file and not yet sized it:
    prometheus-client's own collector fails on it (a scrape answered 500), the gateway's skips
    it. A real worker file beside it is still read."""
    import struct

    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import MultiProcessCollector

    from gateway.observability.metrics import _WorkerFiles

    written = MmapedDict(str(tmp_path / "counter_1.db"))
    written.write_value(json.dumps(["c", "c_total", {}, "help"]), 3.0, 0.0)
    written.close()
    (tmp_path / "counter_2.db").touch()  # created, not sized yet
    with pytest.raises(struct.error):
        list(MultiProcessCollector(None, path=str(tmp_path)).collect())
    (family,) = _WorkerFiles(str(tmp_path)).collect()
    assert [(s.name, s.value) for s in family.samples] == [("c_total", 3.0)]
