"""Table-driven CORS decisions of gateway.cors, request by request (rs/cors and jub0bs/cors style).

Each case is (policy settings, request method, request header lines) -> the outcome the gateway
acts on: a preflight allowed with exactly these headers, a preflight refused (no headers at all),
or the CORS headers of an actual (non-preflight) response (possibly none). The request headers
are a list of lines, so repeated lines (two Origins, Access-Control-Request-Headers over several
lines) are exercised as a server receives them.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import cors
from gateway.cors import add_vary
from gateway.settings.cors import PREFLIGHT_VARY, CorsPolicy

ACAO = "Access-Control-Allow-Origin"
ACAC = "Access-Control-Allow-Credentials"
ACAM = "Access-Control-Allow-Methods"
ACAH = "Access-Control-Allow-Headers"
ACMA = "Access-Control-Max-Age"
ACEH = "Access-Control-Expose-Headers"
ACRM = "Access-Control-Request-Method"
ACRH = "Access-Control-Request-Headers"

# -- policies -----------------------------------------------------------------------------------

EXACT = {  # credentialed, one exact origin
    "allow_origins": ["https://example.com"],
    "allow_methods": ["GET", "POST", "PUT", "DELETE"],
    "allow_headers": ["X-Custom", "Content-Type"],
    "expose_headers": ["X-Request-ID", "RateLimit"],
    "allow_credentials": True,
    "max_age": 600,
}
SUB = {  # subdomain wildcard, no credentials, no max_age
    "allow_origins": ["https://*.example.com"],
    "allow_methods": ["PUT"],
    "allow_headers": ["X-Custom"],
}
PORT = {  # port wildcard on loopback, credentials, default methods
    "allow_origins": ["http://localhost:*"],
    "allow_credentials": True,
}
IPV6 = {
    "allow_origins": ["http://[::1]:*", "https://[2001:db8::1]:8443"],
    "expose_headers": ["X-Trace"],
}
ANY = {  # '*' without credentials
    "allow_origins": ["*"],
    "allow_methods": ["GET", "PUT"],
    "allow_headers": ["*"],
    "expose_headers": ["*"],
    "max_age": 0,
}
NO_METHODS = {"allow_origins": ["https://example.com"], "allow_methods": []}

# -- request helpers ----------------------------------------------------------------------------


def pf(origin: str, method: str, *acrh_lines: str) -> list[tuple[str, str]]:
    """Preflight request lines: Origin, ACRM and any number of ACRH lines."""
    return [("Origin", origin), (ACRM, method), *((ACRH, line) for line in acrh_lines)]


def org(origin: str) -> list[tuple[str, str]]:
    return [("Origin", origin)]


# -- expected outcomes --------------------------------------------------------------------------


def allowed(*pairs: tuple[str, str]) -> tuple:
    return ("preflight", True, sorted(pairs))


REFUSED = ("preflight", False, [])


def actual(*pairs: tuple[str, str]) -> tuple:
    return ("actual", None, sorted(pairs))


NONE = actual()  # an actual request with no CORS headers at all

VARY = ("Vary", PREFLIGHT_VARY)


def exact_ok(origin: str = "https://example.com", headers: bool = False) -> tuple:
    pairs = [(ACAO, origin), (ACAC, "true"), (ACAM, "GET, POST, PUT, DELETE"), (ACMA, "600"),
             VARY]
    if headers:
        pairs.append((ACAH, "X-Custom, Content-Type"))
    return allowed(*pairs)


EXACT_ACTUAL = actual((ACAO, "https://example.com"), (ACAC, "true"),
                      (ACEH, "X-Request-ID, RateLimit"))


def sub_ok(origin: str) -> tuple:
    return allowed((ACAO, origin), (ACAM, "PUT"), VARY)


def port_ok(origin: str) -> tuple:
    return allowed((ACAO, origin), (ACAC, "true"), (ACAM, "GET, HEAD, POST"), VARY)


# -- the table ----------------------------------------------------------------------------------

C = pytest.param
CASES = [
    # exact origin, credentials
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT"), exact_ok(),
      id="exact-preflight-allowed-no-requested-headers-no-ACAH"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom, content-type"),
      exact_ok(headers=True), id="exact-preflight-allowed-with-headers"),
    C(EXACT, "OPTIONS", pf("https://example.com", "DELETE", "X-CUSTOM, Content-TYPE"),
      exact_ok(headers=True), id="header-names-compare-case-insensitively"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom, x-other"), REFUSED,
      id="header-not-allowed"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom", "content-type"),
      exact_ok(headers=True), id="acrh-over-two-lines"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom", "x-other"), REFUSED,
      id="acrh-second-line-not-allowed"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom, ,content-type"),
      exact_ok(headers=True), id="acrh-blank-in-the-middle"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", ",x-custom,"),
      exact_ok(headers=True), id="acrh-leading-and-trailing-commas"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", ""), exact_ok(),
      id="acrh-empty-value-asks-for-nothing"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", " , "), exact_ok(),
      id="acrh-only-blanks-asks-for-nothing"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PUT", "x-custom content-type"), REFUSED,
      id="acrh-entry-not-a-token"),
    C(EXACT, "OPTIONS", pf("https://example.com", "PATCH"), REFUSED, id="method-not-allowed"),
    C(EXACT, "OPTIONS", pf("https://example.com", "put"), REFUSED,
      id="method-case-sensitive-put-vs-PUT"),
    C(EXACT, "OPTIONS", pf("https://example.com", "get"), REFUSED,
      id="method-case-sensitive-get-is-not-safelisted-GET"),
    C(EXACT, "OPTIONS", pf("https://other.example", "PUT"), REFUSED,
      id="preflight-disallowed-origin-no-reflection"),
    C(EXACT, "GET", org("https://example.com"), EXACT_ACTUAL,
      id="actual-allowed-origin-credentials-and-expose"),
    C(EXACT, "GET", org("https://other.example"), NONE,
      id="actual-disallowed-origin-no-reflection"),
    C(EXACT, "GET", org("https://evilexample.com"), NONE, id="exact-vs-evilexample"),
    C(EXACT, "OPTIONS", pf("https://example.com.evil.com", "GET"), REFUSED,
      id="exact-vs-example.com.evil.com"),
    C(EXACT, "GET", org("https://xexample.com"), NONE, id="exact-vs-xexample"),
    C(EXACT, "GET", org("https://example.comx"), NONE, id="exact-vs-longer-tld"),
    C(EXACT, "GET", org("https://a.example.com"), NONE, id="exact-does-not-cover-subdomains"),
    C(EXACT, "OPTIONS", pf("https://example.com/", "PUT"), REFUSED,
      id="request-origin-trailing-slash"),
    C(EXACT, "GET", org("https://example.com/app"), NONE, id="request-origin-with-path"),
    C(EXACT, "OPTIONS", pf("https://EXAMPLE.com", "PUT"), REFUSED,
      id="request-origin-uppercase-host"),
    C(EXACT, "GET", org("HTTPS://example.com"), NONE, id="request-origin-uppercase-scheme"),
    C(EXACT, "OPTIONS", pf("https://example.com:443", "PUT"), REFUSED,
      id="request-origin-default-port-preflight"),
    C(EXACT, "GET", org("https://example.com:443"), NONE,
      id="request-origin-default-port-actual"),
    C(EXACT, "GET", org("https://example.com:8443"), NONE, id="request-origin-other-port"),
    C(EXACT, "GET", org("http://example.com"), NONE, id="request-origin-other-scheme"),
    C(EXACT, "GET", org("https://user@example.com"), NONE, id="request-origin-userinfo"),
    C(EXACT, "OPTIONS", pf("null", "GET"), REFUSED, id="origin-null-preflight"),
    C(EXACT, "GET", org("null"), NONE, id="origin-null-actual"),
    C(EXACT, "GET", [], NONE, id="no-origin"),
    C(EXACT, "OPTIONS", [(ACRM, "PUT")], NONE, id="acrm-without-origin-is-not-a-preflight"),
    C(EXACT, "OPTIONS", org("https://example.com"), EXACT_ACTUAL,
      id="options-without-acrm-is-an-ordinary-request"),
    C(EXACT, "options", pf("https://example.com", "PUT"), EXACT_ACTUAL,
      id="lowercase-options-is-not-a-preflight"),
    C(EXACT, "OPTIONS", [("Origin", "https://example.com"), ("Origin", "https://example.com"),
                         (ACRM, "PUT")], REFUSED, id="two-origin-lines-preflight"),
    C(EXACT, "GET", [("Origin", "https://example.com"), ("Origin", "https://evil.example")],
      NONE, id="two-origin-lines-actual"),
    # subdomain wildcard, no credentials
    C(SUB, "OPTIONS", pf("https://a.example.com", "PUT"), sub_ok("https://a.example.com"),
      id="wildcard-subdomain-depth-1-no-ACAC-no-max-age"),
    C(SUB, "OPTIONS", pf("https://a.b.example.com", "PUT", "X-CUSTOM"),
      allowed((ACAO, "https://a.b.example.com"), (ACAM, "PUT"), (ACAH, "X-Custom"), VARY),
      id="wildcard-subdomain-depth-2"),
    C(SUB, "GET", org("https://x.y.z.example.com"), actual((ACAO, "https://x.y.z.example.com")),
      id="wildcard-subdomain-actual-no-ACAC-no-expose"),
    C(SUB, "OPTIONS", pf("https://example.com", "PUT"), REFUSED,
      id="wildcard-does-not-cover-the-apex"),
    C(SUB, "OPTIONS", pf("https://evilexample.com", "PUT"), REFUSED,
      id="wildcard-vs-evilexample"),
    C(SUB, "GET", org("https://example.com.evil.com"), NONE,
      id="wildcard-vs-example.com.evil.com"),
    C(SUB, "GET", org("https://a.example.com.evil.com"), NONE,
      id="wildcard-vs-a.example.com.evil.com"),
    C(SUB, "OPTIONS", pf("https://xexample.com", "PUT"), REFUSED, id="wildcard-vs-xexample"),
    C(SUB, "GET", org("https://.example.com"), NONE, id="wildcard-vs-empty-label"),
    C(SUB, "OPTIONS", pf("http://a.example.com", "PUT"), REFUSED,
      id="wildcard-scheme-must-match"),
    C(SUB, "OPTIONS", pf("https://a.example.com:8443", "PUT"), REFUSED,
      id="wildcard-port-must-match"),
    C(SUB, "GET", org("https://a.example.com:443"), NONE, id="wildcard-vs-default-port"),
    C(SUB, "GET", org("https://A.example.com"), NONE, id="wildcard-vs-uppercase-label"),
    C(SUB, "OPTIONS", pf("https://a.example.com", "GET"), sub_ok("https://a.example.com"),
      id="safelisted-GET-needs-no-listing"),
    C(SUB, "OPTIONS", pf("https://a.example.com", "DELETE"), REFUSED,
      id="unlisted-non-safelisted-method"),
    C(SUB, "OPTIONS", pf("https://a.example.com", "PUT", "content-type"), REFUSED,
      id="content-type-must-be-listed"),
    # port wildcard, credentials
    C(PORT, "OPTIONS", pf("http://localhost:5173", "POST"), port_ok("http://localhost:5173"),
      id="port-wildcard-any-port"),
    C(PORT, "GET", org("http://localhost"),
      actual((ACAO, "http://localhost"), (ACAC, "true")), id="port-wildcard-default-port"),
    C(PORT, "GET", org("http://localhost.evil.com:3000"), NONE,
      id="port-wildcard-host-must-match"),
    C(PORT, "OPTIONS", pf("https://localhost:3000", "GET"), REFUSED,
      id="port-wildcard-scheme-must-match"),
    C(PORT, "GET", org("http://localhost:0"), NONE, id="port-wildcard-port-zero"),
    C(PORT, "GET", org("http://localhost:70000"), NONE, id="port-wildcard-port-out-of-range"),
    # IPv6
    C(IPV6, "GET", org("http://[::1]:8080"),
      actual((ACAO, "http://[::1]:8080"), (ACEH, "X-Trace")), id="ipv6-loopback-any-port"),
    C(IPV6, "OPTIONS", pf("https://[2001:db8::1]:8443", "HEAD"),
      allowed((ACAO, "https://[2001:db8::1]:8443"), (ACAM, "GET, HEAD, POST"), VARY),
      id="ipv6-exact-preflight"),
    C(IPV6, "GET", org("http://[::2]:8080"), NONE, id="ipv6-other-address"),
    C(IPV6, "GET", org("https://[2001:db8::1]:9443"), NONE, id="ipv6-exact-other-port"),
    C(IPV6, "GET", org("http://[::1"), NONE, id="ipv6-unterminated"),
    # '*' without credentials
    C(ANY, "OPTIONS", pf("https://anything.test", "PUT", "x-whatever"),
      allowed((ACAO, "*"), (ACAM, "GET, PUT"), (ACAH, "*"), (ACMA, "0"), VARY),
      id="star-preflight-acao-star-max-age-zero"),
    C(ANY, "GET", org("https://anything.test:8443"), actual((ACAO, "*"), (ACEH, "*")),
      id="star-actual-acao-star-never-reflected"),
    C(ANY, "OPTIONS", pf("https://anything.test", "DELETE"), REFUSED,
      id="star-method-still-checked"),
    # no allow_methods: nothing to list
    C(NO_METHODS, "OPTIONS", pf("https://example.com", "GET"),
      allowed((ACAO, "https://example.com"), VARY), id="empty-allow-methods-no-ACAM"),
]


def outcome(policy: CorsPolicy, method: str, lines: list[tuple[str, str]]) -> tuple:
    headers = CIMultiDictProxy(CIMultiDict(lines))
    if cors.is_preflight(method, headers):
        answer = cors.preflight(policy, headers)
        return ("preflight", answer.allowed, sorted(answer.headers))
    return ("actual", None, sorted(cors.actual(policy, headers)))


@pytest.mark.parametrize(("settings", "method", "lines", "expected"), CASES)
def test_cors_decision(settings: dict, method: str, lines: list[tuple[str, str]],
                       expected: tuple) -> None:
    policy = CorsPolicy.build("t", **settings)
    got = outcome(policy, method, lines)
    assert got == expected
    names = [name.lower() for name, _ in got[2]]
    assert len(names) == len(set(names)), "a header is sent twice"
    if got[0] == "preflight":
        assert ACEH.lower() not in names  # expose headers are for actual responses only
    if not policy.allow_credentials:
        assert ACAC.lower() not in names
    acao = dict(got[2]).get(ACAO)
    if acao is not None and acao != "*":  # a reflected value is always an allowed origin
        assert acao == dict(lines)["Origin"] and policy.allows_origin(acao)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


# -- Vary -----------------------------------------------------------------------------------------

VARY_CASES = [
    C([], ("Origin",), "Origin", id="empty"),
    C(["Accept-Encoding"], ("Origin",), "Accept-Encoding, Origin", id="keeps-upstream-value"),
    C(["Accept-Encoding", "Accept-Language"], ("Origin",),
      "Accept-Encoding, Accept-Language, Origin", id="several-upstream-lines"),
    C(["origin"], ("Origin",), "origin", id="no-duplicate-case-insensitive"),
    C(["Accept-Encoding, ORIGIN"], (PREFLIGHT_VARY,),
      "Accept-Encoding, ORIGIN, Access-Control-Request-Method, "
      "Access-Control-Request-Headers", id="preflight-vary-merged-without-duplicates"),
    C(["*"], ("Origin",), "*", id="star-stays-star"),
    C(["Accept, *"], (PREFLIGHT_VARY,), "*", id="star-in-a-list-stays-star"),
    C([" , Accept ,"], ("Origin",), "Accept, Origin", id="blanks-dropped"),
    C([], ("Origin", "origin", "Origin, ORIGIN"), "Origin", id="added-names-deduplicated"),
]


@pytest.mark.parametrize(("existing", "names", "expected"), VARY_CASES)
def test_add_vary(existing: list[str], names: tuple[str, ...], expected: str) -> None:
    assert add_vary(existing, *names) == expected
