"""The decision plan as a pure function (no process, no socket): each refusal of admission,
the client IP's source, the CORS outcomes, what is counted, the headers sent upstream, and
the security headers applied to a response."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.admission import Admission, Refusal
from gateway.compiled import COLLECTOR, CompiledPolicy
from gateway.config import load_policy
from gateway.plan import Action, CorsOutcome, Head, IpSource, UpstreamHost, peer_trusted, plan
from gateway.security_headers import apply

POLICY = """\
version: 1
environment: test
server:
  trusted_proxies: [10.0.0.0/8]
  limits: {max_body_size: 1000}
upstream: {url: "http://127.0.0.1:9"}
rate_limits:
  api: {limit: 10, per: 1m}
  tenant: {limit: 10, per: 1m, key: "header:X-Tenant", exempt: [10.9.0.0/16]}
  reports: {limit: 5, per: 1m}
cors:
  default: {allow_origins: ["https://app.example.com"], allow_methods: [GET, DELETE]}
headers:
  default:
    set: {X-Frame-Options: DENY, Strict-Transport-Security: "max-age=600"}
    set_if_missing: {Cache-Control: no-store}
    remove: [Server]
csp_reports: {path: /csp, max_size: 100, rate_limits: [reports]}
routes:
  - {name: ws, match: {path: /ws}, websocket: true}
  - {name: api, match: {path_prefix: /api/}, rate_limits: [api, tenant]}
  - {name: open, match: {path_prefix: /open/}, cors: none, headers: none}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> CompiledPolicy:
    path = Path(tmp_path_factory.mktemp("plan")) / "policy.yaml"
    path.write_text(POLICY)
    return CompiledPolicy.build(load_policy(path))


def make(compiled: CompiledPolicy, method: str = "GET", target: str = "/api/x",
         headers: list[tuple[str, str]] | None = None, peer: str = "192.0.2.1",
         version: tuple[int, int] = (1, 1), length: int | None = None, secure: bool = False):
    given = headers or []
    host = [] if any(n == "Host" for n, _ in given) else [("Host", "gw.test")]
    fields = CIMultiDictProxy(CIMultiDict([*host, *given]))
    head = Head(method, target, fields, peer, secure, version, length,
                has_body=bool(length) or "Transfer-Encoding" in fields)
    return plan(compiled, head, trusted_peer=peer_trusted(compiled, peer), request_id="rid")


WS = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
      ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]

REFUSALS = [
    # (why, request, status)
    ("no HTTP version", dict(version=(0, 9)), 400),
    ("HTTP/2.0 on this port", dict(version=(2, 0)), 505),
    ("a transfer coding other than chunked", dict(headers=[("Transfer-Encoding", "gzip")]), 501),
    ("an ambiguous path", dict(target="/api/%2e%2e%2fx"), 400),
    ("the collector takes POST", dict(target="/csp"), 405),
    ("a CSP report without a length", dict(method="POST", target="/csp"), 413),
    ("a CSP report too large", dict(method="POST", target="/csp", length=101), 413),
    ("TRACE", dict(method="TRACE"), 405),
    ("CONNECT", dict(method="CONNECT"), 405),
    ("a Host with userinfo", dict(headers=[("Host", "a@b")]), 400),
    ("no route", dict(target="/nowhere"), 404),
    ("a WebSocket on a plain route", dict(target="/api/x", headers=WS), 403),
    ("a WebSocket of another version", dict(target="/ws", headers=[
        *WS[:2], ("Sec-WebSocket-Version", "8"), WS[3]]), 426),
    ("a WebSocket from a foreign origin", dict(target="/ws", headers=[
        *WS, ("Origin", "https://evil.example")]), 403),
    ("a body over the limit", dict(method="POST", length=1001), 413),
    ("an expectation other than 100-continue", dict(headers=[("Expect", "fly")]), 417),
]


@pytest.mark.parametrize("why,request_,status", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_is_an_answer_with_its_status(compiled, why, request_, status) -> None:
    p = make(compiled, **request_)
    assert p.action is Action.ANSWER
    assert isinstance(p.verdict, Refusal) and p.verdict.status == status, p.verdict
    assert p.limits is None  # a refusal counts against nothing


def test_the_client_ip_and_where_it_came_from(compiled) -> None:
    untrusted = make(compiled, headers=[("X-Forwarded-For", "203.0.113.5")])
    assert (untrusted.client_ip, untrusted.ip_source) == ("192.0.2.1", IpSource.PEER)
    bare = make(compiled, peer="10.1.1.1")
    assert (bare.client_ip, bare.ip_source) == ("10.1.1.1", IpSource.TRUSTED_PEER)
    walked = make(compiled, peer="10.1.1.1",
                  headers=[("X-Forwarded-For", "203.0.113.5, 10.2.2.2")])
    assert (walked.client_ip, walked.ip_source) == ("203.0.113.5", IpSource.FORWARDED_FOR)


def test_https_is_the_connection_or_a_trusted_proxys_word(compiled) -> None:
    assert make(compiled, secure=True).https
    assert not make(compiled, headers=[("X-Forwarded-Proto", "https")]).https
    assert make(compiled, peer="10.1.1.1", headers=[("X-Forwarded-Proto", "https")]).https


def test_cors_outcomes(compiled) -> None:
    allowed = make(compiled, headers=[("Origin", "https://app.example.com")])
    assert allowed.cors is CorsOutcome.ORIGIN_ALLOWED
    assert ("Access-Control-Allow-Origin", "https://app.example.com") in allowed.cors_headers
    assert make(compiled, headers=[("Origin", "https://evil.example")]).cors \
        is CorsOutcome.ORIGIN_NOT_ALLOWED
    assert make(compiled).cors is CorsOutcome.NOT_CROSS_ORIGIN
    assert make(compiled, target="/open/x", headers=[("Origin", "https://app.example.com")]
                ).cors is CorsOutcome.NO_POLICY
    ok = make(compiled, "OPTIONS", headers=[("Origin", "https://app.example.com"),
                                            ("Access-Control-Request-Method", "DELETE")])
    assert (ok.action, ok.cors) == (Action.PREFLIGHT, CorsOutcome.PREFLIGHT_ALLOWED)
    assert ok.limits is None  # a preflight spends no quota
    refused = make(compiled, "OPTIONS", headers=[("Origin", "https://app.example.com"),
                                                 ("Access-Control-Request-Method", "PUT")])
    assert (refused.action, refused.cors) == (Action.PREFLIGHT, CorsOutcome.PREFLIGHT_REFUSED)
    assert "PUT" in refused.cors_reason
    # before a route is known, the default policy speaks (a browser can read the 404)
    assert make(compiled, target="/nowhere", headers=[("Origin", "https://app.example.com")]
                ).cors is CorsOutcome.ORIGIN_ALLOWED


def test_what_a_request_counts_against(compiled) -> None:
    p = make(compiled, headers=[("X-Tenant", "t1")])
    checks = p.limit_checks(compiled)
    assert [c.policy.name for c in checks] == ["api", "tenant"]
    assert checks[0].key.startswith("gw:{ip=192.0.2.1}:api:")
    assert "{h.x-tenant=t1}" in checks[1].key  # counted per tenant, not per client
    assert checks[1].note is None
    missing = make(compiled).limit_checks(compiled)
    assert missing[1].note is not None  # no X-Tenant: the client IP stands in, and it says so
    exempt = make(compiled, peer="10.9.1.1")
    assert exempt.exempt_from == ("tenant",)
    assert [c.policy.name for c in exempt.limit_checks(compiled)] == ["api"]
    report = make(compiled, "POST", "/csp", length=50)
    assert (report.action, report.limits_name) == (Action.COLLECT_CSP_REPORT, COLLECTOR)
    assert [c.policy.name for c in report.limit_checks(compiled)] == ["reports"]
    assert make(compiled, target="/open/x").limits is None


def test_the_headers_sent_upstream(compiled) -> None:
    p = make(compiled, "DELETE", headers=[("Connection", "X-Secret"), ("X-Secret", "1"),
                                          ("True-Client-IP", "6.6.6.6"), ("Via", "1.0 corp")])
    assert p.action is Action.FORWARD and p.upstream_host is UpstreamHost.TARGET
    out = p.upstream_headers(compiled)
    assert "X-Secret" not in out and "Connection" not in out and "True-Client-IP" not in out
    assert out["X-Forwarded-For"] == "192.0.2.1" and out["X-Real-IP"] == "192.0.2.1"
    assert out["X-Request-ID"] == "rid" and out["Via"] == "1.0 corp, 1.1 gateway"
    assert out["Content-Length"] == "0"  # a bodiless DELETE says so
    assert "Content-Length" not in make(compiled).upstream_headers(compiled)  # a GET does not
    assert make(compiled, headers=[("Transfer-Encoding", "chunked")]).close
    assert isinstance(make(compiled, target="/ws", headers=WS).verdict, Admission)
    assert make(compiled, target="/ws", headers=WS).action is Action.RELAY_WEBSOCKET


def test_security_headers_applied_to_a_response(compiled) -> None:
    p = make(compiled)
    assert p.headers_policy is not None
    out = CIMultiDict([("Server", "upstream/1.0"), ("Cache-Control", "max-age=60"),
                       ("X-Frame-Options", "SAMEORIGIN")])
    apply(p.headers_policy, out, https=False)
    assert "Server" not in out
    assert out["X-Frame-Options"] == "DENY"  # set: the policy wins
    assert out["Cache-Control"] == "max-age=60"  # set_if_missing: the upstream's value wins
    assert "Strict-Transport-Security" not in out  # not over plain HTTP
    secure = CIMultiDict()
    apply(p.headers_policy, secure, https=True)
    assert secure["Strict-Transport-Security"] == "max-age=600"
    assert secure["Cache-Control"] == "no-store"
    assert make(compiled, target="/open/x").headers_policy is None
