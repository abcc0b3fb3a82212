"""CORS and security headers through a real gateway running the shipped policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.client import request, upstream_saw
from tests.support.processes import ROOT, free_port, run_policy_file, run_shipped, stop

DEV_ORIGIN = "http://localhost:5173"
SECURITY = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
            "Content-Security-Policy", "Permissions-Policy", "Cross-Origin-Opener-Policy",
            "Cross-Origin-Resource-Policy", "X-XSS-Protection")


@pytest.fixture
def dev(tmp_path, upstream):
    gw = run_shipped("development.yaml", upstream.url, tmp_path)
    yield gw
    stop(gw.proc)


def preflight(gw, path: str, origin: str, method: str, req_headers: str | None = None):
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if req_headers is not None:
        headers["Access-Control-Request-Headers"] = req_headers
    return request(gw.port, "OPTIONS", path, headers=headers)


def assert_security_headers(reply) -> None:
    for name in SECURITY:
        assert name in reply.headers, name
    assert reply.headers["X-XSS-Protection"] == "0"
    assert "server" not in reply.header_names()


def test_allowed_preflight_is_answered_by_the_gateway(dev) -> None:
    reply = preflight(dev, "/api/auth/login", DEV_ORIGIN, "POST", "content-type, authorization")
    assert reply.status == 204 and reply.body == b""
    assert reply.headers["Access-Control-Allow-Origin"] == DEV_ORIGIN
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    assert reply.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, PATCH, DELETE"
    assert reply.headers["Access-Control-Allow-Headers"] == \
        "Authorization, Content-Type, X-Request-ID"
    assert reply.headers["Access-Control-Max-Age"] == "600"
    assert reply.headers["Vary"] == \
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert "ratelimit-policy" not in reply.header_names()  # spends no quota (issue 12)
    assert_security_headers(reply)


def test_refused_preflight_is_403_without_cors_headers(dev) -> None:
    reply = preflight(dev, "/api/campaigns", "https://evil.example", "PUT")
    assert reply.status == 403
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert not any(n.startswith("access-control-") for n in reply.header_names())
    assert_security_headers(reply)


def test_preflight_for_an_unlisted_header_is_refused(dev) -> None:
    assert preflight(dev, "/api/campaigns", DEV_ORIGIN, "PUT", "x-secret").status == 403


def test_preflights_spend_none_of_the_route_quota(dev) -> None:
    statuses = [preflight(dev, "/api/auth/login", DEV_ORIGIN, "POST").status for _ in range(6)]
    assert statuses == [204] * 6
    login = request(dev.port, "POST", "/api/auth/login", body=b"{}",
                    headers={"Content-Type": "application/json"})
    assert login.status == 200 and login.headers["RateLimit"].startswith('"login";r=4;')


def test_options_without_request_method_is_an_ordinary_request(dev) -> None:
    reply = request(dev.port, "OPTIONS", "/api/campaigns", headers={"Origin": DEV_ORIGIN})
    assert reply.status == 200 and reply.json()["method"] == "OPTIONS"  # the upstream answered
    assert reply.headers["Access-Control-Allow-Origin"] == DEV_ORIGIN


def test_actual_request_gets_cors_headers_and_upstream_cors_is_replaced(dev) -> None:
    reply = request(dev.port, "GET", "/cors-leak", headers={"Origin": DEV_ORIGIN})
    assert reply.headers["Access-Control-Allow-Origin"] == DEV_ORIGIN  # not the upstream's *
    assert reply.headers.get_all("Access-Control-Allow-Origin") == [DEV_ORIGIN]
    assert reply.headers["Access-Control-Expose-Headers"] == \
        "X-Request-ID, RateLimit, RateLimit-Policy, Retry-After"
    assert reply.headers["Vary"] == "Accept-Encoding, Origin"  # added to, not replaced
    assert "x-powered-by" not in reply.header_names()
    assert_security_headers(reply)


def test_disallowed_origin_gets_no_cors_headers_but_still_varies(dev) -> None:
    reply = request(dev.port, "GET", "/cors-leak", headers={"Origin": "https://evil.example"})
    assert not any(n.startswith("access-control-") for n in reply.header_names())
    assert reply.headers["Vary"] == "Accept-Encoding, Origin"


def test_gateway_errors_carry_security_and_cors_headers(dev) -> None:
    for _ in range(5):
        request(dev.port, "POST", "/api/auth/login", body=b"{}", headers={"Origin": DEV_ORIGIN})
    limited = request(dev.port, "POST", "/api/auth/login", body=b"{}",
                      headers={"Origin": DEV_ORIGIN})
    assert limited.status == 429
    assert limited.headers["Access-Control-Allow-Origin"] == DEV_ORIGIN
    assert_security_headers(limited)
    refused = request(dev.port, "TRACE", "/")
    assert refused.status == 405
    assert_security_headers(refused)


@pytest.mark.integration
def test_upstream_down_502_carries_security_headers(tmp_path) -> None:
    gw = run_shipped("development.yaml", f"http://127.0.0.1:{free_port()}", tmp_path)
    try:
        reply = request(gw.port, "GET", "/api/campaigns", headers={"Origin": DEV_ORIGIN})
        assert reply.status == 502
        assert reply.headers["Access-Control-Allow-Origin"] == DEV_ORIGIN
        assert_security_headers(reply)
    finally:
        stop(gw.proc)


def test_parse_errors_carry_the_default_security_headers(dev) -> None:
    from tests.support.client import raw_exchange
    raw = raw_exchange(dev.port, b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 400")
    assert "X-Frame-Options: DENY" in head
    raw = raw_exchange(dev.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    # the parser refused it, so aiohttp answers in HTTP/1.0 (it never learned the version)
    assert head.split(" ")[1] == "400" and "X-Content-Type-Options: nosniff" in head


PRODUCTION_ENV = {"FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com",
                  "TRUSTED_PROXIES": "10.0.0.0/8"}


@pytest.fixture
def prod_behind_lb(tmp_path, upstream):
    """production.yaml with loopback as the trusted load balancer."""
    child = tmp_path / "prod-lb.yaml"
    child.write_text(f"extends: {ROOT / 'policies' / 'production.yaml'}\n"
                     "server: {trusted_proxies: [127.0.0.0/8]}\n")
    gw = run_policy_file(child, upstream.url, tmp_path, env=PRODUCTION_ENV)
    yield gw
    stop(gw.proc)


def test_hsts_only_over_https(prod_behind_lb) -> None:
    https = request(prod_behind_lb.port, "GET", "/api/campaigns",
                    headers={"X-Forwarded-Proto": "https"})
    assert https.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"
    plain = request(prod_behind_lb.port, "GET", "/api/campaigns")
    assert "strict-transport-security" not in plain.header_names()


def test_hsts_not_sent_when_an_untrusted_client_claims_https(tmp_path, upstream) -> None:
    gw = run_shipped("production.yaml", upstream.url, tmp_path, env=PRODUCTION_ENV)
    try:
        reply = request(gw.port, "GET", "/api/campaigns", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in reply.header_names()
    finally:
        stop(gw.proc)


def test_production_refuses_localhost_origins(prod_behind_lb) -> None:
    assert preflight(prod_behind_lb, "/api/campaigns", "http://localhost:3000", "PUT").status \
        == 403
    ok = preflight(prod_behind_lb, "/api/campaigns", "https://app.example.com", "PUT")
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_route_with_cors_none_leaves_cors_to_the_upstream(tmp_path, upstream) -> None:
    child = tmp_path / "nocors.yaml"
    child.write_text(f"extends: {ROOT / 'policies' / 'development.yaml'}\n"
                     "routes:\n  - name: all\n    match: {path_prefix: /}\n    cors: none\n")
    gw = run_policy_file(child, upstream.url, tmp_path)
    try:
        forwarded = preflight(gw, "/cors-leak", DEV_ORIGIN, "PUT")
        assert forwarded.status == 200 and forwarded.body == b"cors"  # the upstream answered
        assert forwarded.headers["Access-Control-Allow-Origin"] == "*"
        seen = upstream_saw(request(gw.port, "GET", "/x", headers={"Origin": DEV_ORIGIN}))
        assert seen["origin"] == [DEV_ORIGIN]
    finally:
        stop(gw.proc)


def test_shipped_development_policy_is_the_one_documented(tmp_path: Path) -> None:
    from gateway.config import load_policy
    dev = load_policy(ROOT / "policies" / "development.yaml", {}).policy
    assert dev.cors["default"].allows_origin("http://localhost:8081")
    prod = load_policy(ROOT / "policies" / "production.yaml",
                       {**PRODUCTION_ENV, "UPSTREAM_URL": "http://app:8000"}).policy
    assert not prod.cors["default"].allows_origin("http://localhost:3000")
    assert prod.headers["default"].hsts and not dev.headers["default"].hsts
