"""The CSP report collector: accepts bounded JSON reports, logs and counts them, rate-limited."""

from __future__ import annotations

import json

import pytest

from gateway.csp_reports import summarize
from tests.support.client import request
from tests.support.metrics import value
from tests.support.processes import start_gateway, stop

REPORT = json.dumps({"csp-report": {
    "document-uri": "https://app.example.com/page", "blocked-uri": "https://evil.example/x.js",
    "violated-directive": "script-src-elem", "original-policy": "default-src 'self'"}}).encode()


@pytest.fixture
def collector(tmp_path, upstream):
    gw = start_gateway(
        tmp_path, upstream.url,
        top_extra="rate_limits:\n  csp: {limit: 3, per: 1h}\n"
                  "csp_reports: {path: /_csp, max_size: 1KiB, rate_limits: [csp]}\n"
                  "headers:\n  default: {set: {X-Frame-Options: DENY}}\n")
    yield gw
    stop(gw.proc)


def post(gw, body: bytes, content_type: str = "application/csp-report"):
    return request(gw.port, "POST", "/_csp", body=body, headers={"Content-Type": content_type})


def test_a_report_is_accepted_logged_and_counted_not_forwarded(collector) -> None:
    reply = post(collector, REPORT)
    assert reply.status == 204 and reply.body == b""
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert value(collector, "gateway_csp_reports_total", result="accepted") == 1
    assert "csp violation from 127.0.0.1" in collector.log_text()
    assert "https://evil.example/x.js" in collector.log_text()


def test_reporting_api_format_is_understood(collector) -> None:
    body = json.dumps([{"type": "csp-violation", "body": {
        "documentURL": "https://app.example.com/", "blockedURL": "inline",
        "effectiveDirective": "script-src"}}]).encode()
    assert post(collector, body, "application/reports+json").status == 204


def test_oversized_reports_are_refused_before_reading(collector) -> None:
    assert post(collector, b"{" + b" " * 2048 + b"}").status == 413


def test_non_json_and_wrong_types_are_refused(collector) -> None:
    assert post(collector, b"not json").status == 400
    assert post(collector, REPORT, "text/plain").status == 415
    assert request(collector.port, "GET", "/_csp").status == 405
    assert value(collector, "gateway_csp_reports_total", result="rejected") == 2


def test_the_collector_is_rate_limited(collector) -> None:
    statuses = [post(collector, REPORT).status for _ in range(4)]
    assert statuses == [204, 204, 204, 429]
    assert value(collector, "gateway_csp_reports_total", result="limited") == 1


def test_summarize_keeps_only_the_useful_fields_truncated() -> None:
    long = {"csp-report": {"blocked-uri": "x" * 500, "original-policy": "secret stuff"}}
    assert summarize(json.dumps(long).encode()) == [{"blocked-uri": "x" * 200}]
    assert summarize(b"[1, 2]") is None
