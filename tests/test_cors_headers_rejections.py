"""Load-time refusals of `cors` and `headers` settings, through the real policy loader.

Each case is a small policy file with one mistake. The loader must refuse it (PolicyError) with
a problem `FILE:LINE:COL: message` whose position is the exact YAML node at fault. In the YAML
text of a case, `@@` marks where that node starts; it is removed before the file is written,
and the expected line and column are computed from where it was.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_policy
from gateway.config.loader import KEYS
from tests.support.policy import problems, write_policy

BASE = """\
version: 1
upstream:
  url: http://127.0.0.1:8000
routes:
  - name: all
    match: {path_prefix: /}
"""
MARK = "@@"


def cors(*lines: str) -> str:
    return "cors:\n  default:\n" + "".join(f"    {line}\n" for line in lines)


def headers(*lines: str) -> str:
    return "headers:\n  default:\n" + "".join(f"    {line}\n" for line in lines)


def place(section: str) -> tuple[str, int, int]:
    """The policy text without the marker, and the marker's 1-based line and column."""
    text = BASE + section
    assert text.count(MARK) == 1, "one marker per case"
    at = text.index(MARK)
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return text.replace(MARK, ""), line, column


ONE = "allow_origins: [https://example.com]"
CRED = "allow_credentials: true"

R = pytest.param
CORS_CASES = [
    R(cors('allow_origins: [@@"*"]', CRED), "'*' with allow_credentials",
      id="star-with-credentials"),
    R(cors('allow_origins: [https://a.example, @@"*"]'), "list it alone", id="star-not-alone"),
    R(cors(ONE, 'expose_headers: [X-Request-ID, @@"*"]', CRED),
      "expose_headers '*' does not work with credentials", id="star-expose-with-credentials"),
    R(cors(ONE, "allow_headers:", "  - Content-Type", '  - @@"*"', CRED),
      "allow_headers '*' is a literal name", id="star-allow-headers-with-credentials"),
    R(cors('allow_origins: [https://ok.example, @@"null"]'), "'null' and file: origins",
      id="null-origin"),
    R(cors("allow_origins:", "  - @@file:///etc/passwd"), "'null' and file: origins",
      id="file-origin"),
    R(cors("allow_origins:", "  - https://ok.example", "  - @@https://example.com/app"),
      "no path, query", id="origin-with-path"),
    R(cors('allow_origins: [@@"https://example.com?q=1"]'), "no path, query",
      id="origin-with-query"),
    R(cors("allow_origins:", "  - @@https://example.com/"), "trailing slash",
      id="origin-trailing-slash"),
    R(cors('allow_origins: [@@"https://example.com#top"]'), "fragment", id="origin-fragment"),
    R(cors("allow_origins: [@@https://user:pw@example.com]"), "no userinfo",
      id="origin-userinfo"),
    R(cors('allow_origins: [@@" https://example.com"]'), "whitespace",
      id="origin-leading-space"),
    R(cors("allow_origins:", '  - @@"https://example.com\\t"'), "whitespace",
      id="origin-trailing-tab"),
    R(cors("allow_origins: [@@https://App.Example.com]"), "lower case",
      id="origin-uppercase-host"),
    R(cors("allow_origins: [@@https://example.com:443]"), "default port written out",
      id="origin-default-https-port"),
    R(cors("allow_origins: [@@http://localhost:80]", CRED), "default port written out",
      id="origin-default-http-port"),
    R(cors("allow_origins: [@@https://example.com:65536]"), "bad host or port",
      id="origin-port-out-of-range"),
    R(cors("allow_origins: [@@https://example.com:0]"), "bad host or port", id="origin-port-0"),
    R(cors("allow_origins: [@@https://example.com:https]"), "bad host or port",
      id="origin-port-not-a-number"),
    R(cors("allow_origins: [@@https://exa_mple.com]"), "bad host or port",
      id="origin-bad-host"),
    R(cors('allow_origins: [@@"https://a.*.example.com"]'),
      "'*' is allowed only as a leading '*.' label", id="wildcard-inner-label"),
    R(cors('allow_origins: [@@"https://*example.com"]'),
      "'*' is allowed only as a leading '*.' label", id="wildcard-partial-label"),
    R(cors('allow_origins: [@@"https://*.*.example.com"]'),
      "'*' is allowed only as a leading '*.' label", id="wildcard-two-labels"),
    R(cors('allow_origins: [@@"https://example.*"]'),
      "'*' is allowed only as a leading '*.' label", id="wildcard-tld"),
    R(cors('allow_origins: [@@"https://example.com:8*"]'),
      "'*' is allowed only as a leading '*.' label", id="wildcard-partial-port"),
    R(cors('allow_origins: [@@"https://*.[::1]"]'), "cannot precede an IP address",
      id="wildcard-before-ipv6"),
    R(cors('allow_origins: [@@"https://*.0.0.1"]'), "cannot precede an IP address",
      id="wildcard-before-ipv4-labels"),
    R(cors('allow_origins: [@@"*://example.com"]'), "must start with http:// or https://",
      id="wildcard-scheme"),
    R(cors("allow_origins: [@@example.com]"), "must start with http:// or https://",
      id="origin-without-scheme"),
    R(cors("allow_origins: [@@wss://example.com]"), "must start with http:// or https://",
      id="origin-websocket-scheme"),
    R(cors("allow_origins: [https://ok.example, @@http://app.example.com]", CRED),
      "plain-http origins with credentials", id="plain-http-with-credentials"),
    R(cors('allow_origins: [@@"http://*.example.com"]', CRED),
      "plain-http origins with credentials", id="plain-http-wildcard-with-credentials"),
    R(cors('allow_origins: [@@"https://*.com"]', CRED), "public suffix",
      id="public-suffix-com"),
    R(cors('allow_origins: [@@"https://*.github.io"]', CRED), "public suffix",
      id="public-suffix-github-io"),
    R(cors('allow_origins: [@@"https://*.co.uk:*"]', CRED), "public suffix",
      id="public-suffix-co-uk-any-port"),
    R(cors(ONE, "allow_methods: [GET, @@CONNECT]"), "forbidden by the Fetch standard",
      id="method-connect"),
    R(cors(ONE, "allow_methods:", "  - GET", "  - @@TRACE"), "forbidden by the Fetch standard",
      id="method-trace"),
    R(cors(ONE, "allow_methods: [@@track]"), "forbidden by the Fetch standard",
      id="method-track-lowercase"),
    R(cors(ONE, "allow_methods: [GET, @@put]"), "compare case-sensitively",
      id="method-lowercase"),
    R(cors(ONE, "allow_methods: [GET, PUT, @@PUT]"), "PUT is listed twice",
      id="method-listed-twice"),
    R(cors(ONE, "allow_methods: [@@GET POST]"), "is not a method name",
      id="method-not-a-token"),
    R(cors(ONE, "allow_headers: [Content-Type, @@Cookie]"), "forbidden request header",
      id="header-cookie"),
    R(cors(ONE, "allow_headers: [@@host]"), "forbidden request header", id="header-host"),
    R(cors(ONE, "allow_headers: [@@Sec-Fetch-Site]"), "forbidden request header",
      id="header-sec"),
    R(cors(ONE, "allow_headers: [@@Proxy-Authorization]"), "forbidden request header",
      id="header-proxy"),
    R(cors(ONE, "allow_headers: [@@Access-Control-Allow-Origin]"), "forbidden request header",
      id="header-access-control"),
    R(cors(ONE, "allow_headers: [X-Custom, @@x-custom]"), "listed twice",
      id="header-listed-twice-case-insensitive"),
    R(cors(ONE, 'expose_headers: [@@"X Trace"]'), "is not a header name",
      id="expose-header-not-a-token"),
    R(cors(ONE, "max_age: @@24h1s"), "max_age must be between 0s and 24h",
      id="max-age-over-24h"),
    R(cors(ONE, "max_age: @@-1s"), "is not a duration", id="max-age-negative"),
    R(cors("allow_origins: @@[]"), "at least one origin", id="no-origins"),
    R(cors(ONE, "@@allow_origin: [https://example.com]"), "did you mean 'allow_origins'",
      id="misspelt-key"),
    R(cors(ONE, "allow_credentials: @@1"), "must be true or false", id="credentials-not-bool"),
    R(cors(ONE, "dangerously_allow_public_suffix_wildcard: @@maybe"), "must be true or false",
      id="public-suffix-switch-not-bool"),
    R(cors(ONE, "dangerously_allow_insecure_origins: @@1"), "must be true or false",
      id="insecure-origins-switch-not-bool"),
]

H = "set:"
HEADER_CASES = [
    R(headers(H, '  X-Custom: @@"a\\r\\nInjected: b"'), "contains CR, LF or NUL",
      id="crlf-in-value"),
    R(headers(H, '  X-Custom: @@"a\\nb"'), "contains CR, LF or NUL", id="lf-in-value"),
    R(headers("set_if_missing:", '  X-Custom: @@"a\\0b"'), "contains CR, LF or NUL",
      id="nul-in-value"),
    R(headers(H, "  X-Frame-Options: DENY", "  @@X-Frame-Options: SAMEORIGIN"),
      "duplicate key", id="duplicate-name-same-case"),
    R(headers(H, "  X-Frame-Options: DENY", "  @@x-frame-options: SAMEORIGIN"),
      "x-frame-options is listed twice", id="duplicate-name-other-case"),
    R(headers(H, "  Server: gateway", "remove: [@@Server]"), "remove: Server is already in set",
      id="duplicate-name-set-and-remove"),
    R(headers(H, "  X-Custom: a", "set_if_missing:", "  @@x-custom: b"),
      "x-custom is already in set", id="duplicate-name-set-and-set-if-missing"),
    R(headers(H, "  @@X Custom: a"), "is not a header name", id="bad-name-in-set"),
    R(headers("remove: [Server, @@X Powered By]"), "is not a header name",
      id="bad-name-in-remove"),
    R(headers(H, "  X-Custom: @@[a, b]"), "must be a string", id="value-not-a-string"),
    R(headers(H, "  Content-Security-Policy: @@\"default-src 'self'; scirpt-src 'self'\""),
      "unknown CSP directive 'scirpt-src'", id="csp-unknown-directive"),
    R(headers(H, "  Content-Security-Policy: @@default-src self"), "must be quoted: 'self'",
      id="csp-unquoted-keyword"),
    R(headers(H, "  Content-Security-Policy: @@\"default-src 'self', img-src *\""),
      "',' inside CSP source", id="csp-comma-inside-source"),
    R(headers(H, "  Content-Security-Policy: @@\"script-src https://a.example;b.example\""),
      "unknown CSP directive 'b.example'", id="csp-semicolon-inside-source"),
    R(headers(H, "  Content-Security-Policy: @@\"script-src 'unsafe-everything'\""),
      "unknown quoted CSP keyword", id="csp-unknown-quoted-keyword"),
    R(headers(H, "  Content-Security-Policy: @@\"img-src 'self'; IMG-SRC *\""),
      "appears twice", id="csp-directive-twice"),
    R(headers("set_if_missing:", "  Content-Security-Policy-Report-Only: @@\"default-src none\""),
      "must be quoted", id="csp-report-only-checked-too"),
    R(headers(H, "  Strict-Transport-Security: @@max-age=-1"), "non-negative integer",
      id="hsts-negative-max-age"),
    R(headers(H, "  Strict-Transport-Security: @@max-age=1.5"), "non-negative integer",
      id="hsts-fractional-max-age"),
    R(headers(H, "  Strict-Transport-Security: @@includeSubDomains"), "exactly one max-age",
      id="hsts-no-max-age"),
    R(headers(H, '  Strict-Transport-Security: @@"max-age=1; max-age=2"'),
      "exactly one max-age", id="hsts-two-max-ages"),
    R(headers(H, '  Strict-Transport-Security: @@"max-age=31536000; preload"'),
      "preload needs includeSubDomains", id="hsts-preload-without-subdomains"),
    R(headers(H, '  Strict-Transport-Security: @@"max-age=86400; includeSubDomains; preload"'),
      "at least a year", id="hsts-preload-short-max-age"),
    R(headers(H, '  Strict-Transport-Security: @@"max-age=600; includeSubdomain"'),
      "unknown Strict-Transport-Security directive", id="hsts-misspelt-directive"),
    R(headers("set_if_missing:", "  @@Strict-Transport-Security: max-age=600"),
      "Strict-Transport-Security belongs in set", id="hsts-in-set-if-missing"),
    R(headers(H, "  X-Frame-Options: @@ALLOW-FROM https://example.com"),
      "must be one of DENY, SAMEORIGIN", id="xfo-allow-from"),
    R(headers(H, "  X-Frame-Options: @@ALLOWALL"), "must be one of DENY, SAMEORIGIN",
      id="xfo-allowall"),
    R(headers(H, "  Referrer-Policy: @@no-referer"), "is not a Referrer-Policy token",
      id="referrer-policy-typo"),
    R(headers(H, '  Referrer-Policy: @@"no-referrer, unsafe"'), "'unsafe'",
      id="referrer-policy-bad-fallback"),
    R(headers(H, "  X-Content-Type-Options: @@sniff"), "must be one of nosniff",
      id="xcto-not-nosniff"),
    R(headers(H, "  Permissions-Policy: @@camera 'none'"), "is not a Permissions-Policy entry",
      id="permissions-policy-feature-policy-syntax"),
    R(headers(H, '  X-XSS-Protection: @@"1; mode=block"'), "X-XSS-Protection must be 0",
      id="xss-protection-block"),
    R(headers(H, "  Cross-Origin-Opener-Policy: @@same-site"), "must be one of",
      id="coop-bad-value"),
]


@pytest.mark.parametrize(("section", "fragment"), CORS_CASES + HEADER_CASES)
def test_refused_at_the_node(tmp_path: Path, section: str, fragment: str) -> None:
    text, line, column = place(section)
    path = write_policy(tmp_path, text)
    found = problems(path, {})
    prefix = f"{path}:{line}:{column}: "
    assert any(p.startswith(prefix) and fragment in p for p in found), \
        f"expected a problem at {prefix!r} containing {fragment!r}; got {found}"


def refused_key(section: str) -> str:
    """The cors/headers setting whose value a case's marker points into."""
    return re.findall(r"^    ([a-z_]+):", section.split(MARK)[0], re.MULTILINE)[-1]


@pytest.mark.parametrize(("cases", "section"), [(CORS_CASES, "cors.*"),
                                                (HEADER_CASES, "headers.*")])
def test_every_setting_the_loader_reads_has_a_refused_value(cases: list, section: str) -> None:
    """The tables cover every key the loader accepts in these sections (a new setting comes
    with a refusal case), and no case points at a key the loader does not read."""
    assert {refused_key(case.values[0]) for case in cases} == set(KEYS[section])


# -- accepted edge cases -------------------------------------------------------------------------

ACCEPTED = [
    R(cors("allow_origins: [http://localhost:3000]", CRED),
      [("http://localhost:3000", True), ("http://localhost:3001", False)],
      id="loopback-http-with-credentials"),
    R(cors('allow_origins: ["http://127.0.0.1:*"]', CRED),
      [("http://127.0.0.1:5173", True), ("http://127.0.0.1", True),
       ("http://127.0.0.2:5173", False)], id="loopback-ip-any-port-with-credentials"),
    R(cors('allow_origins: ["http://[::1]:3000"]', CRED), [("http://[::1]:3000", True)],
      id="ipv6-loopback-with-credentials"),
    R(cors('allow_origins: ["https://*.example.co.uk"]', CRED),
      [("https://shop.example.co.uk", True), ("https://example.co.uk", False),
       ("https://evil.co.uk", False)], id="wildcard-below-public-suffix"),
    R(cors('allow_origins: ["https://*.github.io"]', CRED,
           "dangerously_allow_public_suffix_wildcard: true"),
      [("https://someone.github.io", True)], id="public-suffix-wildcard-when-insisted"),
    R(cors("allow_origins: [http://intranet.example]", CRED,
           "dangerously_allow_insecure_origins: true"),
      [("http://intranet.example", True)], id="plain-http-with-credentials-when-insisted"),
    R(cors("allow_origins: [http://intranet.example]"), [("http://intranet.example", True)],
      id="plain-http-without-credentials"),
    R(cors('allow_origins: ["https://*.com"]', "dangerously_allow_public_suffix_wildcard: true"),
      [("https://anything.com", True), ("https://anything.org", False)],
      id="star-com-when-insisted"),
    R(cors("allow_origins: [https://a.example, https://a.example]", "max_age: 24h"),
      [("https://a.example", True)], id="repeated-origin-merged-max-age-24h"),
    R(cors('allow_origins: ["*"]', 'allow_headers: ["*"]', 'expose_headers: ["*"]',
           "max_age: 0s"), [("https://anyone.example", True)], id="star-without-credentials"),
]


@pytest.mark.parametrize(("section", "checks"), ACCEPTED)
def test_accepted_cors(tmp_path: Path, section: str, checks: list[tuple[str, bool]]) -> None:
    policy = load_policy(write_policy(tmp_path, BASE + section), {}).policy
    for origin, allowed in checks:
        assert policy.cors["default"].allows_origin(origin) is allowed, origin


ACCEPTED_HEADERS = [
    R(headers(H, '  Strict-Transport-Security: "max-age=31536000; includeSubDomains; preload"'),
      id="hsts-preload-one-year"),
    R(headers(H, "  Strict-Transport-Security: max-age=0"), id="hsts-max-age-zero"),
    R(headers(H, "  Content-Security-Policy: \"default-src 'none'; script-src 'self' "
                 "'nonce-abc123' 'sha256-AbC+/=' https://cdn.example; report-uri /csp\""),
      id="csp-nonce-hash-host-report-uri"),
    R(headers(H, '  Referrer-Policy: "no-referrer, strict-origin-when-cross-origin"'),
      id="referrer-policy-with-fallback"),
    R(headers(H, "  X-Frame-Options: SAMEORIGIN", '  X-XSS-Protection: "0"',
              '  Permissions-Policy: "camera=(), geolocation=(self \\"https://maps.example\\")"',
              "remove: [Server, X-Powered-By]"), id="common-set"),
]


@pytest.mark.parametrize("section", ACCEPTED_HEADERS)
def test_accepted_headers(tmp_path: Path, section: str) -> None:
    policy = load_policy(write_policy(tmp_path, BASE + section), {}).policy
    assert "default" in policy.headers
