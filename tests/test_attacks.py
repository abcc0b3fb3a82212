"""Attack table: raw bytes at the gateway, the answer expected, and what the upstream received.

Each row names a policy variant (one gateway per variant, started the first time a row needs
it), the bytes sent on one connection (several sends, reads in between, pipelined requests),
the answers expected in order (status, problem+json, headers present or absent), whether the
gateway closes the connection, and facts about what reached the upstream. The upstream is the
recording upstream (tests/support/recorder.py, an independent h11 parser), and `rec.sync()`
pushes a marker request through the gateway so that "nothing else reached the upstream" is
asserted without sleeping. Rows that need more than one connection (rate limits, pools,
WebSockets, timing) are scenarios: a function of the same context.

Rows for behaviour the gateway does not have yet are `xfail(strict=True)`; the reason names
issue 10's item, or "found by attack suite" for a defect this table found. When the fix lands
the row XPASSes, which fails the run: remove the marker then. A variant whose policy uses keys
the gateway does not know yet fails to start inside its (xfail) rows, not at module setup.

Every socket operation is bounded (at most 5 s); traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Conn, Response, exchange
from tests.support.processes import Gateway, start_gateway, stop
from tests.support.recorder import Recorder, start_recorder

# The cases share the module's recorder and its gateways (one per policy variant, started on
# first use): one worker runs them all, so each is started once, not once per worker and again
# each time that worker comes back to the module from another one.
pytestmark = pytest.mark.xdist_group("attacks")

TIMEOUT = 3.0
PROBLEM = "application/problem+json"

# --------------------------------------------------------------------------------------------
# policy variants

ROUTES_DEFAULT = """\
  - name: ws
    match: {path: /ws}
    websocket: true
  - name: login
    match: {path: /api/auth/login, methods: [POST]}
    rate_limits: [login]
  - name: api
    match: {path_prefix: /api/}
    rate_limits: [api]
  - name: everything
    match: {path_prefix: /}
"""
# big limits: the rows only ask *which* limit applied (RateLimit-Policy), never exhaust them
LIMITS_BIG = """\
rate_limits:
  login: {limit: 100000, per: 1h}
  api: {limit: 100000, per: 1h}
"""
NOSNIFF = """\
headers:
  default:
    set: {X-Content-Type-Options: nosniff}
"""


@dataclass(frozen=True)
class Variant:
    upstream: str = "recorder"  # or "echo": tests/support/upstream.py (WebSockets, /slow)
    routes: str = ROUTES_DEFAULT
    server_extra: str = ""
    upstream_extra: str = ""
    top_extra: str = LIMITS_BIG + NOSNIFF


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "limits": Variant(server_extra="limits: {max_body_size: 1KiB, max_header_size: 1KiB, "
                                   "max_headers: 20}"),
    "trusted": Variant(server_extra="trusted_proxies: [127.0.0.1/32]"),
    "preserve-host": Variant(
        upstream_extra="preserve_host: true",
        routes="  - name: app\n    match: {host: app.example.com, path_prefix: /}\n"
               "  - name: everything\n    match: {path_prefix: /}\n"),
    "path-matching": Variant(
        server_extra="path_matching: {case_sensitive: false, trailing_slash: ignore}",
        routes="  - name: login\n    match: {path: /api/auth/login, methods: [POST]}\n"
               "    rate_limits: [login]\n"
               "  - name: api\n    match: {path_prefix: /api/}\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  login: {limit: 5, per: 15m}\n"),
    "host-route": Variant(
        routes="  - name: api-host\n    match: {host: api.example.com, path_prefix: /}\n"
               "    rate_limits: [tiny]\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  tiny: {limit: 100000, per: 1h}\n"),
    "xff-login": Variant(
        server_extra="trusted_proxies: [127.0.0.1/32]",
        routes="  - name: login\n    match: {path: /api/auth/login, methods: [POST]}\n"
               "    rate_limits: [login]\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  login: {limit: 5, per: 15m}\n"),
    "login5": Variant(
        routes="  - name: login\n    match: {path: /api/auth/login, methods: [POST]}\n"
               "    rate_limits: [login]\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  login: {limit: 5, per: 15m}\n"),
    "login5-other": Variant(
        routes="  - name: login\n    match: {path: /api/auth/login, methods: [POST]}\n"
               "    rate_limits: [login]\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  login: {limit: 5, per: 15m}\n"),
    "xff-login-128": Variant(
        server_extra="trusted_proxies: [127.0.0.1/32]",
        routes="  - name: login\n    match: {path: /api/auth/login, methods: [POST]}\n"
               "    rate_limits: [login]\n"
               "  - name: everything\n    match: {path_prefix: /}\n",
        top_extra="rate_limits:\n  login: {limit: 5, per: 15m, ipv6_prefix: 128}\n"),
    "pool": Variant(
        upstream="echo",
        upstream_extra="max_connections: 4\npool_timeout: 500ms\nmax_websockets: 4\n"
                       "max_streaming_bodies: 2\nmax_websockets_per_client: 2\n"
                       "max_streaming_bodies_per_client: 1\nrequest_buffer: 1KiB"),
    "pool-recorder": Variant(
        upstream_extra="max_connections: 4\npool_timeout: 500ms\nmax_websockets: 4\n"
                       "max_streaming_bodies: 2\nmax_websockets_per_client: 2\n"
                       "max_streaming_bodies_per_client: 1\nrequest_buffer: 1KiB"),
    "ws": Variant(upstream="echo"),
    "ws-limit": Variant(upstream="echo", server_extra="limits: {max_websocket_message: 64KiB}"),
    "timeouts": Variant(server_extra="timeouts: {header: 2s, idle: 6s}"),
}


class Gateways:
    """One gateway per variant, started on first use; a failed start is remembered and
    re-raised in every row that needs that variant."""

    def __init__(self, tmp: Path, rec: Recorder) -> None:
        self.tmp = tmp
        self.rec = rec
        self.started: dict[str, Gateway] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str, echo_url: Callable[[], str]) -> Gateway:
        if name in self.failed:
            raise RuntimeError(f"variant {name!r} did not start:\n{self.failed[name]}")
        if name not in self.started:
            v = VARIANTS[name]
            url = self.rec.url if v.upstream == "recorder" else echo_url()
            try:
                self.started[name] = start_gateway(
                    self.tmp, url, routes=v.routes, server_extra=v.server_extra,
                    upstream_extra=v.upstream_extra, top_extra=v.top_extra)
            except RuntimeError as exc:
                self.failed[name] = str(exc)[-2000:]
                raise
        gw = self.started[name]
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway {name!r} exited:\n{gw.log_text()[-2000:]}")
        return gw

    def close(self) -> None:
        for gw in self.started.values():
            stop(gw.proc)


@pytest.fixture(scope="module")
def recorder(tmp_path_factory) -> Iterator[Recorder]:
    rec = start_recorder(tmp_path_factory.mktemp("recorder"))
    yield rec
    stop(rec.proc)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, recorder) -> Iterator[Gateways]:
    gws = Gateways(tmp_path_factory.mktemp("gateways"), recorder)
    yield gws
    gws.close()


# --------------------------------------------------------------------------------------------
# request bytes


def req(method: str, target: str, *headers: str, body: bytes = b"", host: str | None = "gw.test",
        version: str = "HTTP/1.1", close: bool = True, length: bool | None = None) -> bytes:
    """One request; Content-Length is added for a body (or when `length` is True)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += headers
    if length or (length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def post(target: str, *headers: str, body: bytes = b"", close: bool = True,
         host: str = "gw.test") -> bytes:
    return req("POST", target, *headers, body=body, close=close, length=True, host=host)


def raw(*lines: bytes | str, body: bytes = b"") -> bytes:
    """Lines joined with CRLF and the blank line; bytes kept exactly."""
    parts = [ln.encode("latin-1") if isinstance(ln, str) else ln for ln in lines]
    return b"\r\n".join([*parts, b"", b""]) + body


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def ws_handshake(path: str = "/ws", *extra: str, key: str | None = WS_KEY,
                 version: str = "13") -> bytes:
    headers = ["Connection: Upgrade", "Upgrade: websocket", f"Sec-WebSocket-Version: {version}"]
    if key is not None:
        headers.append(f"Sec-WebSocket-Key: {key}")
    return req("GET", path, *headers, *extra, close=False)


# --------------------------------------------------------------------------------------------
# expected answers


@dataclass(frozen=True)
class A:
    """An expected answer."""

    status: int | tuple[int, ...]
    problem: bool = False  # application/problem+json whose "status" is the status
    present: tuple[str, ...] = ()  # header names that must be there
    absent: tuple[str, ...] = ()  # header names that must not
    equals: tuple[tuple[str, str], ...] = ()  # header: exact value
    contains: tuple[tuple[str, str], ...] = ()  # header: substring of its value
    line: bytes | None = None  # how the status line starts

    def check(self, resp: Response, n: int) -> None:
        where = f"answer {n}: {resp.raw[:300]!r}"
        allowed = self.status if isinstance(self.status, tuple) else (self.status,)
        assert resp.status in allowed, f"status {resp.status}, expected {allowed}; {where}"
        if self.problem:
            ctype = (resp.header("Content-Type") or "").split(";")[0].strip()
            assert ctype == PROBLEM, f"Content-Type {ctype!r}, expected {PROBLEM}; {where}"
            assert resp.json()["status"] == resp.status, where
        for name in self.present:
            assert resp.header(name) is not None, f"{name} missing; {where}"
        for name in self.absent:
            assert resp.header(name) is None, f"{name} present; {where}"
        for name, value in self.equals:
            got = resp.header(name)
            assert got == value, f"{name}: {got!r} != {value!r}; {where}"
        for name, value in self.contains:
            assert value in (resp.header(name) or ""), f"{name} lacks {value!r}; {where}"
        if self.line is not None:
            assert resp.raw.startswith(self.line), f"status line not {self.line!r}; {where}"


OK = A(200)


def problem(status: int | tuple[int, ...], **kw: Any) -> A:
    return A(status, problem=True, **kw)


def limited_by(name: str, status: int = 200) -> A:
    return A(status, contains=(("RateLimit-Policy", f'"{name}"'),))


# --------------------------------------------------------------------------------------------
# facts about what the upstream received


def _headers(entry: dict, name: str) -> list[str]:
    return [v for k, v in entry.get("headers", []) if k.lower() == name.lower()]


def _complete(entries: list[dict]) -> list[dict]:
    return [e for e in entries if "error" not in e]


@dataclass(frozen=True)
class Up:
    """One fact about the upstream's log; `fn` raises AssertionError with a message."""

    text: str
    fn: Callable[[list[dict]], None]

    def __call__(self, entries: list[dict]) -> None:
        self.fn(entries)


def nothing() -> Up:
    def fn(entries: list[dict]) -> None:
        assert entries == [], f"upstream received {entries}"
    return Up("nothing reached the upstream", fn)


def nothing_complete() -> Up:
    def fn(entries: list[dict]) -> None:
        assert _complete(entries) == [], f"upstream received complete requests {entries}"
    return Up("no complete request reached the upstream", fn)


def targets(*expected: str) -> Up:
    def fn(entries: list[dict]) -> None:
        got = [e.get("target") for e in entries]
        assert got == list(expected), f"upstream targets {got}, expected {list(expected)}"
    return Up(f"upstream targets are {expected}", fn)


def only_targets(*allowed: str) -> Up:
    def fn(entries: list[dict]) -> None:
        got = [e.get("target") for e in entries]
        assert set(got) <= set(allowed), f"upstream targets {got}, allowed {allowed}"
    return Up(f"nothing but {allowed} reached the upstream", fn)


def if_forwarded_intact(target: str, body: bytes) -> Up:
    """Either refused (nothing reached the upstream) or forwarded once with exactly `body`."""
    def fn(entries: list[dict]) -> None:
        got = [e.get("target") for e in entries]
        assert got in ([], [target]), f"upstream targets {got}"
        for e in _complete(entries):
            assert e["body_length"] == len(body), e
            assert e["body_head"].encode("latin-1") == body[:200], e
    return Up(f"nothing, or {target} with its body intact", fn)


def no_target(target: str) -> Up:
    def fn(entries: list[dict]) -> None:
        assert all(e.get("target") != target for e in entries), f"{target} reached upstream"
    return Up(f"{target} never reaches the upstream", fn)


def no_header(name: str, value: str | None = None) -> Up:
    """No request (header or trailer) carries `name` (with `value`, when given)."""
    def fn(entries: list[dict]) -> None:
        for e in entries:
            for k, v in e.get("headers", []) + e.get("trailers", []):
                if k.lower() == name.lower() and (value is None or v == value):
                    raise AssertionError(f"upstream received {k}: {v} in {e}")
    return Up(f"no {name}" + (f": {value}" if value else ""), fn)


def header_is(name: str, value: str) -> Up:
    """Every request carries exactly one `name`, equal to `value`."""
    def fn(entries: list[dict]) -> None:
        assert _complete(entries), "no request reached the upstream"
        for e in _complete(entries):
            assert _headers(e, name) == [value], f"{name} {_headers(e, name)} != [{value!r}]: {e}"
    return Up(f"{name} is {value}", fn)


def header_not(name: str, value: str) -> Up:
    def fn(entries: list[dict]) -> None:
        for e in entries:
            assert value not in _headers(e, name), f"{name}: {value} reached upstream: {e}"
    return Up(f"{name} is not {value}", fn)


def body_is(length: int, head: bytes | None = None, content_length: bool = False) -> Up:
    def fn(entries: list[dict]) -> None:
        assert _complete(entries), "no request reached the upstream"
        for e in _complete(entries):
            assert e["body_length"] == length, f"body length {e['body_length']} != {length}"
            if head is not None:
                assert e["body_head"].encode("latin-1") == head[:200], e
            if content_length:
                assert _headers(e, "Content-Length") == [str(length)], e
    return Up(f"body of {length} bytes", fn)


def no_errors() -> Up:
    def fn(entries: list[dict]) -> None:
        bad = [e for e in entries if "error" in e]
        assert not bad, f"upstream saw framing errors / incomplete requests: {bad}"
    return Up("no framing errors at the upstream", fn)


def _no_framing_errors(entries: list[dict]) -> None:
    bad = [e for e in entries if "error" in e and e["error"] != "incomplete"]
    assert not bad, f"the gateway sent the upstream bytes h11 refuses: {bad}"


# checked after every row: whatever the gateway forwards, a strict HTTP/1.1 parser can read
# (a request cut short because its client went away is not a framing error)
ALWAYS = Up("the upstream never sees a framing error", _no_framing_errors)


FORGED_CLIENT_HEADERS = (
    "True-Client-IP", "CF-Connecting-IP", "X-Client-IP", "X-Cluster-Client-IP",
    "Fastly-Client-IP", "Client-IP", "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr",
    "X-ProxyUser-Ip", "X-Original-Forwarded-For",
)
FORGED_LINES = tuple(f"{name}: 6.6.6.6" for name in FORGED_CLIENT_HEADERS)


# --------------------------------------------------------------------------------------------
# rows


class Read:
    """A step: read one answer before sending more."""


READ = Read()


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = bytes | Read | Pause


@dataclass
class Ctx:
    """What a scenario gets."""

    gw: Gateway
    rec: Recorder
    port: int
    mark: int
    variant: str
    started: float = field(default_factory=time.time)

    def upstream(self) -> list[dict]:
        """What the upstream logged since the row began (a straggler from an earlier row,
        e.g. an aborted request logged late, is left out by its time)."""
        if VARIANTS[self.variant].upstream != "recorder":
            raise RuntimeError("variant has no recorder upstream")
        self.rec.sync(self.port)
        return [e for e in self.rec.since(self.mark)
                if e.get("t_head", e.get("t", 0.0)) >= self.started - 0.01]


@dataclass
class Row:
    id: str
    variant: str = "default"
    send: tuple[Step, ...] = ()
    answers: tuple[A, ...] = ()
    closed: bool | None = None  # True: closed after the answers; False: still open
    upstream: tuple[Up, ...] = ()
    xfail: str | None = None
    scenario: Callable[[Ctx], None] | None = None


ROWS: list[Row] = []


def row(id: str, *send: Step, answers: A | tuple[A, ...] = (), variant: str = "default",
        closed: bool | None = None, upstream: Up | tuple[Up, ...] = (),
        xfail: str | None = None) -> None:
    ROWS.append(Row(id, variant, send, answers if isinstance(answers, tuple) else (answers,),
                    closed, upstream if isinstance(upstream, tuple) else (upstream,), xfail))


def scenario(id: str, variant: str, xfail: str | None = None):
    def register(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        ROWS.append(Row(id, variant, xfail=xfail, scenario=fn))
        return fn
    return register


def item(n: int) -> str:
    return f"issue 10 item {n}"


def found(why: str) -> str:
    return f"found by attack suite: {why}"


# ---- issue 10 item 1: trailers become headers of the next pipelined request ----------------

CHUNKED_WITH_COOKIE_TRAILER = (
    b"POST /t1 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nCookie: session=attacker\r\n\r\n")
NO_ATTACKER_COOKIE = (no_header("Cookie", "session=attacker"),)
CLOSES_AFTER_CHUNKED = A(200, equals=(("Connection", "close"),))

row("1-trailer-cookie-pipelined-get",
    CHUNKED_WITH_COOKIE_TRAILER + b"GET /t2 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    answers=CLOSES_AFTER_CHUNKED, closed=True, upstream=NO_ATTACKER_COOKIE)
row("1-trailer-cookie-pipelined-http10-no-headers",
    CHUNKED_WITH_COOKIE_TRAILER + b"GET /t2 HTTP/1.0\r\n\r\n",
    answers=CLOSES_AFTER_CHUNKED, closed=True, upstream=NO_ATTACKER_COOKIE)
row("1-trailer-cookie-second-packet",
    CHUNKED_WITH_COOKIE_TRAILER, READ, b"GET /t2 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    answers=CLOSES_AFTER_CHUNKED, closed=True, upstream=NO_ATTACKER_COOKIE)
row("1-trailer-never-forwarded-as-header",  # the request itself must not gain the cookie
    CHUNKED_WITH_COOKIE_TRAILER,
    answers=A(200), upstream=(targets("/t1"), body_is(3, b"abc"), *NO_ATTACKER_COOKIE))

# ---- item 2: transfer codings other than chunked ------------------------------------------

for coding in ("identity, chunked", "gzip, chunked", "deflate, chunked"):
    row(f"2-te-{coding.split(',')[0]}-chunked",
        raw("POST /x HTTP/1.1", "Host: gw.test", f"Transfer-Encoding: {coding}",
            body=b"5\r\nhello\r\n0\r\n\r\n"),
        answers=problem(501), closed=True, upstream=nothing())
row("2-te-chunked-on-two-lines",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    answers=problem(400), closed=True, upstream=nothing())

# ---- item 3: HTTP versions ----------------------------------------------------------------

row("3-http-2.0-request-line", raw("GET /v HTTP/2.0", "Host: gw.test"),
    answers=problem(505, line=b"HTTP/1.1 505"), closed=True, upstream=nothing())
row("3-http-1.2-request-line", raw("GET /v HTTP/1.2", "Host: gw.test"),
    answers=problem(505, line=b"HTTP/1.1 505"), closed=True, upstream=nothing())
row("3-versionless-request-line", raw("GET /v", "Host: gw.test"),
    answers=problem(400), closed=True, upstream=nothing())

# ---- item 4: Connection naming end-to-end framing/host headers ----------------------------

row("4-connection-host-keeps-host-with-preserve-host",
    req("GET", "/p", "Connection: Host", host="app.example.com", close=False),
    variant="preserve-host", answers=OK, upstream=header_is("Host", "app.example.com"))
row("4-connection-content-length-keeps-the-body",
    req("POST", "/p", "Connection: Content-Length", body=b"hello", host="app.example.com",
        close=False),
    variant="preserve-host", answers=OK,
    upstream=(targets("/p"), body_is(5, b"hello", content_length=True)))

# ---- item 5: upstream status codes the gateway must not relay -----------------------------

row("5-upstream-status-600-is-502", req("GET", "/__answer/600"),
    answers=problem(502), upstream=targets("/__answer/600"))
row("5-upstream-101-to-plain-get-is-502", req("GET", "/__answer/101"),
    answers=problem(502), upstream=targets("/__answer/101"))
row("5-upstream-103-early-hints-then-200", req("GET", "/__answer/103"),
    answers=A(200, absent=("Link",)), upstream=targets("/__answer/103"))

# ---- malformed upstream responses (section 3) ---------------------------------------------

for name in ("dup-cl", "cl-te", "space-in-name", "nul-in-value", "bare-cr-in-value",
             "cl-negative", "status-2-digits"):
    row(f"upstream-response-{name}-is-502", req("GET", f"/__answer/raw/{name}"),
        answers=problem(502, absent=("Set-Cookie",)), upstream=targets(f"/__answer/raw/{name}"))
row("upstream-response-obs-fold-never-becomes-a-header", req("GET", "/__answer/raw/obs-fold"),
    answers=A((200, 502), absent=("Set-Cookie",)), upstream=targets("/__answer/raw/obs-fold"))
row("upstream-response-http-1.0-read-until-close",
    req("GET", "/__answer/raw/http-1.0-no-length"), answers=A(200))


@scenario("upstream-extra-bytes-after-204-never-answer-another-request", "default")
def _no_response_poisoning(ctx: Ctx) -> None:
    for name in ("204-with-body-keep", "304-with-body-keep"):
        first = exchange(ctx.port, req("GET", f"/__answer/raw/{name}"))
        assert first.status in (204, 304, 502), first.raw
        for i in range(3):  # whichever pooled connection they take
            resp = exchange(ctx.port, req("GET", f"/after-{name}-{i}"))
            assert resp.status == 200 and resp.header("Set-Cookie") is None, resp.raw
            assert resp.json()["target"] == f"/after-{name}-{i}", resp.raw


# ---- item 6: path spellings that dodge an exact-path rate limit ---------------------------


@scenario("6-login-limit-across-case-and-trailing-slash", "path-matching")
def _login_spellings(ctx: Ctx) -> None:
    statuses = []
    for i in range(7):
        for target in (("/api/auth/login/", "/API/AUTH/LOGIN") if i % 2 else
                       ("/API/AUTH/LOGIN", "/api/auth/login/")):
            statuses.append(exchange(ctx.port, post(target)).status)
    assert sorted(statuses) == [200] * 5 + [429] * 9, statuses
    assert len(_complete(ctx.upstream())) == 5


for target in ("/api/auth/login;jsessionid=x", "/api/auth/login.", "/api/auth/login%2e"):
    row(f"6-default-policy-{target.rsplit('login', 1)[1]}", post(target),
        answers=problem(400), upstream=nothing())

# ---- item 7: host-scoped routes and host spellings ----------------------------------------

row("7-host-route-exact", req("GET", "/h", host="api.example.com"), variant="host-route",
    answers=limited_by("tiny"))
for label, host in (("trailing-dot", "api.example.com."), ("upper-case", "API.EXAMPLE.COM"),
                    ("explicit-port-80", "api.example.com:80")):
    row(f"7-host-route-{label}", req("GET", "/h", host=host), variant="host-route",
        answers=limited_by("tiny"))
row("7-other-host-not-limited", req("GET", "/h", host="www.example.com"), variant="host-route",
    answers=A(200, absent=("RateLimit-Policy",)))

# ---- item 8: IPv6 clients keyed by /64 ----------------------------------------------------


def login_as(port: int, client: str) -> int:
    return exchange(port, post("/api/auth/login", f"X-Forwarded-For: {client}")).status


@scenario("8-seven-addresses-in-one-v6-64-share-a-counter", "xff-login")
def _v6_64(ctx: Ctx) -> None:
    statuses = [login_as(ctx.port, f"2001:db8:1:2::{n}") for n in range(1, 8)]
    assert statuses == [200] * 5 + [429] * 2, statuses


@scenario("8-another-v6-64-has-its-own-counter", "xff-login")
def _v6_other_64(ctx: Ctx) -> None:
    statuses = [login_as(ctx.port, f"2001:db8:7:1::{n}") for n in range(1, 6)]
    assert statuses == [200] * 5, statuses
    assert login_as(ctx.port, "2001:db8:7:2::1") == 200


@scenario("8-v4-mapped-v6-and-v4-share-a-counter", "xff-login")
def _v4_mapped(ctx: Ctx) -> None:
    statuses = [login_as(ctx.port, c) for c in ["::ffff:198.51.100.7", "198.51.100.7"] * 3]
    assert statuses == [200] * 5 + [429], statuses


@scenario("8-xff-hop-ports-do-not-make-new-clients", "xff-login")
def _xff_ports(ctx: Ctx) -> None:
    for clients in (["198.51.100.9:1111", "198.51.100.9:2222", "198.51.100.9"],
                    ["[2001:db8:8::1]:443", "[2001:db8:8::1]:444", "2001:db8:8::1"]):
        statuses = [login_as(ctx.port, c) for c in clients * 2]
        assert statuses == [200] * 5 + [429], (clients, statuses)


@scenario("8-ipv6-prefix-128-keys-whole-addresses", "xff-login-128")
def _v6_128(ctx: Ctx) -> None:
    statuses = [login_as(ctx.port, f"2001:db8:9:2::{n}") for n in range(1, 8)]
    assert statuses == [200] * 7, statuses
    statuses = [login_as(ctx.port, "2001:db8:9:2::1") for _ in range(5)]
    assert statuses == [200] * 4 + [429], statuses


# ---- item 9: client-IP headers the upstream might believe ---------------------------------

_NO_FORGED = tuple(no_header(n) for n in FORGED_CLIENT_HEADERS)
row("9-forged-client-ip-headers-untrusted-peer",
    req("GET", "/x", *FORGED_LINES, "X-Real-IP: 6.6.6.6"),
    answers=OK, upstream=(*_NO_FORGED, header_is("X-Real-IP", "127.0.0.1")))
row("9-forged-client-ip-headers-trusted-peer",
    req("GET", "/x", *FORGED_LINES, "X-Real-IP: 6.6.6.6", "X-Forwarded-For: 203.0.113.9"),
    variant="trusted", answers=OK,
    upstream=(*_NO_FORGED, header_is("X-Real-IP", "203.0.113.9")))
row("9-x-real-ip-is-the-gateways-untrusted",
    req("GET", "/x", "X-Real-IP: 6.6.6.6"),
    answers=OK, upstream=header_is("X-Real-IP", "127.0.0.1"))

# ---- item 10: pool and buffer starvation --------------------------------------------------


def ws_open(port: int) -> Conn:
    conn = Conn(port)
    conn.send(ws_handshake())
    resp = conn.read_response()
    assert resp.status == 101, resp.raw
    return conn


@scenario("10a-third-websocket-of-one-client-is-503", "pool")
def _ws_per_client(ctx: Ctx) -> None:
    with ws_open(ctx.port), ws_open(ctx.port), Conn(ctx.port) as third:
        third.send(ws_handshake())
        resp = third.read_response()
        problem(503, present=("Retry-After",)).check(resp, 3)


@scenario("10b-busy-pool-answers-503-quickly", "pool")
def _pool_busy(ctx: Ctx) -> None:
    holders = [Conn(ctx.port, timeout=5.0) for _ in range(4)]
    try:
        for c in holders:
            c.send(req("GET", "/slow/3"))
        time.sleep(0.3)
        start = time.monotonic()
        resp = exchange(ctx.port, req("GET", "/x"))
        took = time.monotonic() - start
        problem(503, present=("Retry-After",)).check(resp, 5)
        assert took < 1.5, f"the fifth request waited {took:.2f}s"
    finally:
        for c in holders:
            c.sock.close()


@scenario("10c-trickled-bodies-do-not-block-a-get", "pool")
def _trickle(ctx: Ctx) -> None:
    stop_flag = threading.Event()
    conns = [Conn(ctx.port, timeout=5.0) for _ in range(3)]

    def trickle(c: Conn) -> None:
        with contextlib.suppress(OSError):
            c.send(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5000\r\n\r\n")
            while not stop_flag.wait(0.05):
                c.send(b"x")

    threads = [threading.Thread(target=trickle, args=(c,), daemon=True) for c in conns]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        start = time.monotonic()
        with Conn(ctx.port, timeout=2.5) as c:
            c.send(req("GET", "/x"))
            resp = c.read_response()
        assert resp.status == 200, resp.raw
        assert time.monotonic() - start < 2.0
    finally:
        stop_flag.set()
        for t in threads:
            t.join(2)
        for c in conns:
            c.sock.close()


@scenario("10c-small-trickled-body-is-buffered-before-the-upstream", "pool-recorder")
def _buffered(ctx: Ctx) -> None:
    with Conn(ctx.port, timeout=5.0) as c:
        c.send(b"POST /buffered HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 600\r\n\r\n")
        for i in range(15):
            if i:
                time.sleep(0.1)
            c.send(b"y" * 40)
        last_sent = time.time()
        resp = c.read_response()
    assert resp.status == 200
    entries = _complete(ctx.upstream())
    assert [e["target"] for e in entries] == ["/buffered"]
    e = entries[0]
    assert e["body_length"] == 600
    assert e["t_head"] >= last_sent - 0.05, "the upstream got the head before the body was in"


# ---- item 11: WebSocket message size ------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 0x2, announce: int | None = None) -> bytes:
    """A masked client frame; `announce` overrides the length in the header."""
    n = len(payload) if announce is None else announce
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read_frame(conn: Conn) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame (unmasked)."""
    def need(n: int) -> bytes:
        while len(conn.buf) < n:
            conn._fill()
        return conn._take(n)
    b0, b1 = need(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", need(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", need(8))[0]
    return b0 & 0x0F, need(n)


def ws_close_code(conn: Conn, within: float) -> int | None:
    """Read frames until a close frame; its code (None if the socket just closed)."""
    conn.sock.settimeout(within)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            opcode, payload = ws_read_frame(conn)
        except (ConnectionError, TimeoutError):
            return None
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


@scenario("11-ws-frame-announcing-64MiB-is-closed-1009", "ws-limit")
def _ws_huge_announce(ctx: Ctx) -> None:
    before = rss_kib(ctx.gw.proc.pid)
    with ws_open(ctx.port) as c:
        frame = ws_frame(b"", announce=64 * 1024 * 1024)
        c.send(frame + b"abcdefgh")
        code = ws_close_code(c, 2.0)
    assert code == 1009, code
    grown = rss_kib(ctx.gw.proc.pid) - before
    assert grown < 4 * 1024, f"gateway RSS grew by {grown} KiB"


@scenario("11-ws-100KiB-message-is-closed-1009", "ws-limit")
def _ws_100k(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        c.send(ws_frame(b"z" * 100 * 1024))
        assert ws_close_code(c, 3.0) == 1009


@scenario("11-ws-60KiB-message-is-relayed", "ws-limit")
def _ws_60k(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        c.send(ws_frame(b"q" * 60 * 1024))
        c.sock.settimeout(3.0)
        assert ws_read_frame(c) == (0x2, b"q" * 60 * 1024)


# ---- item 12: a partial pipelined head while the first request is answered ----------------


@scenario("12-partial-pipelined-head-hits-the-header-timeout", "timeouts")
def _partial_pipelined(ctx: Ctx) -> None:
    with Conn(ctx.port, timeout=5.0) as c:
        c.send(req("GET", "/__slow/1", close=False) + b"GET /x HTTP/1.1\r\nHost: a\r\n")
        sent = time.monotonic()
        assert c.read_response().status == 200
        assert c.closed_within(5.0), "the connection stayed open (or answered the partial head)"
        took = time.monotonic() - sent
    assert took < 4.5, f"closed after {took:.1f}s: the idle timeout, not the header timeout"


@scenario("12-partial-head-sent-during-the-request-hits-the-header-timeout", "timeouts")
def _partial_during(ctx: Ctx) -> None:
    with Conn(ctx.port, timeout=5.0) as c:
        c.send(req("GET", "/__slow/1", close=False))
        time.sleep(0.3)
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        sent = time.monotonic()
        assert c.read_response().status == 200
        assert c.closed_within(5.0), "the connection stayed open (or answered the partial head)"
        took = time.monotonic() - sent
    assert took < 4.5, f"closed after {took:.1f}s: the idle timeout, not the header timeout"


# ---- item 14: answers the gateway makes before a route, and WebSocket refusals ------------

GATEWAY_MADE = ("X-Request-ID",)
row("14-ws-handshake-without-key-is-400-problem", ws_handshake(key=None), variant="ws",
    answers=problem(400, present=GATEWAY_MADE, absent=("Server",),
                    equals=(("X-Content-Type-Options", "nosniff"),)))
row("14-ws-version-8-is-426-problem", ws_handshake(version="8"), variant="ws",
    answers=problem(426, equals=(("Sec-WebSocket-Version", "13"),)))
row("14-ws-101-has-no-server-header", ws_handshake(), variant="ws",
    answers=A(101, absent=("Server",)))
row("14-parser-414-has-request-id-no-server", req("GET", "/" + "a" * 2000), variant="limits",
    answers=problem(414, present=GATEWAY_MADE, absent=("Server",)), closed=True,
    upstream=nothing())
row("14-parser-431-has-request-id-no-server", req("GET", "/x", "X-Long: " + "a" * 2000),
    variant="limits", answers=problem(431, present=GATEWAY_MADE, absent=("Server",)),
    closed=True, upstream=nothing())
row("14-parser-400-has-request-id-no-server", b"\x16\x03\x01garbage\r\n\r\n",
    answers=problem(400, present=GATEWAY_MADE, absent=("Server",)), closed=True,
    upstream=nothing())

# ---- item 15: Expect on two lines ---------------------------------------------------------


@scenario("15-expect-continue-and-foo-is-417", "default")
def _expect_two_lines(ctx: Ctx) -> None:
    with Conn(ctx.port) as c:
        c.send(raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 5",
                   "Expect: 100-continue", "Expect: foo"))
        resp = c.read_response()
        assert b"100 Continue" not in resp.raw
        problem(417).check(resp, 1)
    assert ctx.upstream() == []


# ---- smuggling shapes (section 3) ---------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def refused(id: str, data: bytes, status: int | tuple[int, ...] = 400, variant: str = "default",
            xfail: str | None = None, closed: bool | None = True) -> None:
    """Refused with a problem, connection closed, and nothing (not even a pipelined
    request behind it) reaches the upstream."""
    row(id, data + SMUGGLED, variant=variant, answers=problem(status), closed=closed,
        upstream=nothing(), xfail=xfail)


refused("cl-and-te", raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 5",
                         "Transfer-Encoding: chunked", body=b"0\r\n\r\n"))
refused("te-obs-fold", raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: chunked",
                           " identity", body=b"0\r\n\r\n"))
refused("te-obs-fold-onto-other-header",
        raw("POST /x HTTP/1.1", "Host: gw.test", "X-Pad: a", "\tTransfer-Encoding: chunked",
            "Content-Length: 3", body=b"abc"))
refused("te-space-before-colon", raw("POST /x HTTP/1.1", "Host: gw.test",
                                     "Transfer-Encoding : chunked", body=b"0\r\n\r\n"))
refused("te-bare-lf-line", b"POST /x HTTP/1.1\r\nHost: gw.test\nTransfer-Encoding: chunked"
                           b"\r\n\r\n0\r\n\r\n")
refused("te-xchunked", raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: xchunked",
                           body=b"0\r\n\r\n"), status=(400, 501))
refused("te-chunked-then-identity", raw("POST /x HTTP/1.1", "Host: gw.test",
                                        "Transfer-Encoding: chunked, identity",
                                        body=b"0\r\n\r\n"), status=(400, 501))
row("te-on-http-1.0-closes-after",  # RFC 9112 6.1: framing faulty, close after processing
    raw("POST /x HTTP/1.0", "Host: gw.test", "Transfer-Encoding: chunked",
        "Connection: keep-alive", body=b"5\r\nhello\r\n0\r\n\r\n") + SMUGGLED,
    answers=A((200, 400)), closed=True, upstream=(no_target("/smuggled"), no_errors()))
refused("cl-duplicate-equal", raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 5",
                                  "Content-Length: 5", body=b"hello"))
refused("cl-duplicate-different", raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 3",
                                      "Content-Length: 4", body=b"abcd"))
refused("cl-list-in-one-line", raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 5, 5",
                                   body=b"hello"))
for label, value in (("plus", "+5"), ("negative", "-1"), ("hex", "0x10"),
                     ("huge", "99999999999999999999999"), ("space-inside", "1 0"),
                     ("underscore", "1_0")):
    refused(f"cl-{label}", raw("POST /x HTTP/1.1", "Host: gw.test", f"Content-Length: {value}",
                               body=b"hello"), status=(400, 413))
CHUNKED_HEAD = b"POST /x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
for label, body in (("size-0x-prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
                    ("size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
                    ("size-overlong-hex", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
                    ("size-with-space", b"5 \r\nhello\r\n0\r\n\r\n"),
                    ("ext-quoted-cr", b'5;a="b\rc"\r\nhello\r\n0\r\n\r\n'),
                    ("missing-crlf-after-data", b"5\r\nhello0\r\n\r\n"),
                    ("bare-lf-terminators", b"5\nhello\n0\n\n"),
                    ("data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n")):
    row(f"chunk-{label}", CHUNKED_HEAD + body + SMUGGLED, answers=problem(400), closed=True,
        upstream=nothing_complete())
row("chunk-size-leading-zeros-is-fine",
    CHUNKED_HEAD + b"0000000000000000000000005\r\nhello\r\n0\r\n\r\n",
    answers=OK, upstream=(targets("/x"), body_is(5, b"hello")))
row("te-chunked-trailing-space-is-chunked",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: chunked ", "Connection: close",
        body=b"5\r\nhello\r\n0\r\n\r\n"),
    answers=OK, upstream=(targets("/x"), body_is(5, b"hello"), no_errors()))
row("te-chunked-trailing-tab-never-desyncs",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: chunked\t", "Connection: close",
        body=b"5\r\nhello\r\n0\r\n\r\n"),
    answers=A((200, 400)), upstream=if_forwarded_intact("/x", b"hello"))
row("chunked-body-missing-final-crlf-waits",
    CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n", Pause(1.0),
    answers=(), closed=False, upstream=nothing_complete())
refused("nul-in-header-value", raw("GET /x HTTP/1.1", "Host: gw.test", b"X-A: a\x00b"))
refused("bare-cr-in-header-value",
        raw("GET /x HTTP/1.1", "Host: gw.test", b"X-A: a\rSet-Cookie: evil=1"))
refused("space-in-header-name", raw("GET /x HTTP/1.1", "Host: gw.test", "X A: b"))
refused("invalid-token-in-header-name", raw("GET /x HTTP/1.1", "Host: gw.test", "X(A): b"))
refused("empty-header-name", raw("GET /x HTTP/1.1", "Host: gw.test", ": b"))
refused("lowercase-method", raw("get /x HTTP/1.1", "Host: gw.test"))
refused("method-with-nul", raw(b"G\x00ET /x HTTP/1.1", "Host: gw.test"))
refused("tab-in-target", raw("GET /a\tb HTTP/1.1", "Host: gw.test"))
row("request-line-two-spaces-forwards-canonical-line",
    raw("GET  /x HTTP/1.1", "Host: gw.test", "Connection: close"),
    answers=A((200, 400)), upstream=only_targets("/x"))
refused("absolute-form-other-host", raw("GET http://evil.example/x HTTP/1.1", "Host: gw.test"))
refused("authority-form-get", raw("GET example.com:80 HTTP/1.1", "Host: gw.test"))
refused("asterisk-form", raw("OPTIONS * HTTP/1.1", "Host: gw.test"))
refused("fragment-in-target", raw("GET /x#frag HTTP/1.1", "Host: gw.test"))
refused("413-then-pipelined", raw("POST /x HTTP/1.1", "Host: gw.test",
                                  "Content-Length: 1000000000"), status=413, variant="limits",
        closed=None)  # when the socket closes: see body-413-... below
refused("400-bad-path-then-pipelined", raw("GET /a%2fb HTTP/1.1", "Host: gw.test"))
row("chunked-body-over-limit-is-413-and-never-completes-upstream",
    CHUNKED_HEAD + b"".join(b"100\r\n" + b"b" * 256 + b"\r\n" for _ in range(8))
    + b"0\r\n\r\n" + SMUGGLED,
    variant="limits", answers=problem(413), closed=True, upstream=nothing_complete())

# ---- path spellings against route-scoped limits (section 3) -------------------------------

for label, target, upstream_target in (
        ("percent-encoded-letter", "/%61pi/auth/login", "/api/auth/login"),
        ("encoded-l", "/api/auth/%6Cogin", "/api/auth/login"),
        ("double-slashes", "//api//auth/login", "/api/auth/login"),
        ("dot-dot-segment", "/x/../api/auth/login", "/api/auth/login"),
        ("dot-segment", "/api/./auth/login", "/api/auth/login"),
        ("encoded-dot-dot-mixed-case", "/api/auth/x/%2e%2E/login", "/api/auth/login"),
        ("dot-dot-above-root", "/%2e%2e/api/auth/login", "/api/auth/login"),
        ("query-does-not-change-route", "/api/auth/login?next=/x", "/api/auth/login?next=/x")):
    row(f"path-{label}-hits-login-limit", post(target), answers=limited_by("login"),
        upstream=targets(upstream_target))
for label, target in (("encoded-slash", "/api%2Fauth/login"),
                      ("encoded-slash-lower", "/api/auth%2flogin"),
                      ("backslash", "/api\\auth\\login"),
                      ("encoded-backslash", "/api%5Cauth%5Clogin"),
                      ("encoded-nul", "/api/auth/login%00"),
                      ("encoded-crlf", "/api/auth/login%0D%0ASet-Cookie:x"),
                      ("double-encoded-dot", "/api/auth/%252e%252e/login"),
                      ("dot-dot-semicolon", "/api/x/..;/auth/login")):
    row(f"path-{label}-is-400", post(target), answers=problem(400), upstream=nothing())
for label, target in (("semicolon-mid-path", "/api;x/auth/login"),
                      ("semicolon-trailing", "/api/auth/login;"),
                      ("double-trailing-dot", "/api/auth/login.."),
                      ("encoded-double-trailing-dot", "/api/auth/login%2E%2E"),
                      ("encoded-tab", "/api/auth/login%09")):
    row(f"path-{label}-is-400", post(target), answers=problem(400), upstream=nothing())
row("path-trailing-encoded-space-is-400", post("/api/auth/login%20"),
    answers=problem(400), upstream=nothing())
row("path-dot-segments-around-login-resolve-first", post("/api/auth/./login/.."),
    answers=limited_by("api"), upstream=targets("/api/auth/"))
row("path-raw-full-width-letter-is-400",
    post("/api/auth/LOGIN").replace(b"/LOGIN", "/\uff4cogin".encode()),
    answers=problem(400), upstream=nothing())
row("path-overlong-utf8-dot-is-400", post("/api/x/%C0%AE%C0%AE/auth/login"),
    answers=problem(400), upstream=nothing())
row("path-encoded-full-width-dot-kept-encoded", post("/api/x/%EF%BC%8E%EF%BC%8E/auth/login"),
    answers=limited_by("api"), upstream=targets("/api/x/%EF%BC%8E%EF%BC%8E/auth/login"))
row("path-websocket-route-is-exact", ws_handshake("/ws/"), answers=problem(403),
    upstream=nothing())

# ---- identity headers (section 3) ---------------------------------------------------------

row("xff-from-untrusted-not-believed", req("GET", "/x", "X-Forwarded-For: 203.0.113.1"),
    answers=OK, upstream=(header_is("X-Forwarded-For", "127.0.0.1"),
                          header_is("X-Real-IP", "127.0.0.1")))
row("xff-many-lines-from-untrusted", req("GET", "/x", "X-Forwarded-For: 1.1.1.1",
                                         "X-Forwarded-For: 2.2.2.2"),
    answers=OK, upstream=header_is("X-Forwarded-For", "127.0.0.1"))
row("xff-very-long-from-untrusted",
    req("GET", "/x", "X-Forwarded-For: " + ", ".join(f"10.0.{i // 250}.{i % 250}"
                                                     for i in range(500))),
    answers=OK, upstream=header_is("X-Forwarded-For", "127.0.0.1"))
row("xff-garbage-hop-stops-the-walk", req("GET", "/x",
                                          "X-Forwarded-For: 203.0.113.5, not-an-ip"),
    variant="trusted", answers=OK, upstream=header_is("X-Real-IP", "127.0.0.1"))
row("xff-nearest-genuine-hop-is-client",
    req("GET", "/x", "X-Forwarded-For: 203.0.113.5, garbage, 198.51.100.1"),
    variant="trusted", answers=OK, upstream=header_is("X-Real-IP", "198.51.100.1"))
row("forwarded-from-untrusted-dropped", req("GET", "/x", "Forwarded: for=6.6.6.6;proto=https"),
    answers=OK, upstream=(no_header("Forwarded"), header_is("X-Forwarded-Proto", "http")))
row("x-forwarded-host-proto-from-untrusted-replaced",
    req("GET", "/x", "X-Forwarded-Host: evil.example", "X-Forwarded-Proto: https",
        "X-Forwarded-Port: 443"),
    answers=OK, upstream=(header_is("X-Forwarded-Host", "gw.test"),
                          header_is("X-Forwarded-Proto", "http"), no_header("X-Forwarded-Port")))
row("request-id-crlf-like-from-untrusted-replaced",
    req("GET", "/x", "X-Request-ID: abc%0D%0ASet-Cookie:%20evil=1"),
    answers=A(200, absent=("Set-Cookie",)),
    upstream=header_not("X-Request-ID", "abc%0D%0ASet-Cookie:%20evil=1"))
row("request-id-well-formed-from-untrusted-replaced", req("GET", "/x", "X-Request-ID: mine-1"),
    answers=A(200), upstream=header_not("X-Request-ID", "mine-1"))
row("request-id-overlong-from-trusted-replaced",
    req("GET", "/x", "X-Request-ID: " + "r" * 300), variant="trusted",
    answers=OK, upstream=header_not("X-Request-ID", "r" * 300))
row("request-id-well-formed-from-trusted-kept", req("GET", "/x", "X-Request-ID: trace-42"),
    variant="trusted", answers=A(200, equals=(("X-Request-ID", "trace-42"),)),
    upstream=header_is("X-Request-ID", "trace-42"))
row("query-crlf-stays-encoded-no-split",
    req("GET", "/x?a=%0D%0ASet-Cookie:%20evil=1"),
    answers=A(200, absent=("Set-Cookie",)), upstream=targets("/x?a=%0D%0ASet-Cookie:%20evil=1"))

# ---- host forms (section 3) ---------------------------------------------------------------

refused("host-missing-on-1.1", raw("GET /x HTTP/1.1"))
refused("host-duplicate", raw("GET /x HTTP/1.1", "Host: a.example", "Host: b.example"))
refused("host-with-userinfo", raw("GET /x HTTP/1.1", "Host: user@b.example"))
refused("host-with-path", raw("GET /x HTTP/1.1", "Host: b.example/path"))
refused("host-with-space", raw("GET /x HTTP/1.1", "Host: a b.example"))
refused("host-bad-port", raw("GET /x HTTP/1.1", "Host: b.example:80x"))
row("host-empty-on-http-1.0", raw("GET /x HTTP/1.0", "Host:"), answers=OK,
    upstream=targets("/x"))
row("host-ipv6-literal", req("GET", "/x", host="[::1]:8080"), answers=OK,
    upstream=header_is("X-Forwarded-Host", "[::1]:8080"))
row("host-upstream-gets-its-own-authority", req("GET", "/x", host="attacker.example"),
    answers=OK, upstream=header_not("Host", "attacker.example"))

# ---- upgrades (section 3) -----------------------------------------------------------------

row("upgrade-websocket-on-plain-route-is-403", ws_handshake("/chat"), answers=problem(403),
    upstream=nothing())
row("upgrade-h2c-not-forwarded",
    req("GET", "/x", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
    answers=A(200), upstream=(no_header("Upgrade"), no_header("HTTP2-Settings"),
                              no_header("Connection")))
row("upgrade-websocket-with-post-not-upgraded",
    req("POST", "/ws", "Connection: Upgrade", "Upgrade: websocket",
        "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {WS_KEY}", length=True),
    answers=A((200, 400, 405)), upstream=(no_header("Upgrade"), no_header("Connection")))
row("connection-upgrade-without-upgrade", req("GET", "/ws", "Connection: upgrade"),
    answers=A((200, 400)), upstream=(no_header("Upgrade"), no_header("Connection")))
row("upgrade-websocket-on-http-1.0-not-upgraded",
    req("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {WS_KEY}", version="HTTP/1.0", close=False),
    answers=A((200, 400, 426)), upstream=no_header("Upgrade"))
row("upgrade-header-without-connection-token",
    req("GET", "/ws", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {WS_KEY}"),
    answers=A((200, 400, 426)), upstream=no_header("Upgrade"))
row("hop-by-hop-listed-in-connection-removed",
    req("GET", "/x", "Connection: X-Secret, close", "X-Secret: s3cret", "Keep-Alive: 5",
        "Proxy-Authorization: Basic Zm9vOmJhcg==", "TE: trailers", "Proxy-Connection: keep-alive"),
    answers=OK, upstream=(no_header("X-Secret"), no_header("Keep-Alive"),
                          no_header("Proxy-Authorization"), no_header("TE"),
                          no_header("Proxy-Connection")))

# ---- methods (section 3) ------------------------------------------------------------------

for method in ("TRACE", "TRACK", "CONNECT"):
    row(f"method-{method.lower()}-refused", req(method, "/x"), answers=problem((400, 405)),
        upstream=nothing())

# ---- exhaustion (section 3) ---------------------------------------------------------------

refused("header-count-over-limit", req("GET", "/x", *[f"X-H{i}: 1" for i in range(40)]),
        status=431, variant="limits")
refused("header-line-over-limit", req("GET", "/x", "X-Long: " + "a" * 2000), status=431,
        variant="limits")
refused("request-line-over-limit", req("GET", "/" + "a" * 2000), status=414, variant="limits")


@scenario("many-idle-connections-do-not-starve-a-request", "default")
def _many_idle(ctx: Ctx) -> None:
    idle = [socket.create_connection(("127.0.0.1", ctx.port), timeout=TIMEOUT)
            for _ in range(200)]
    try:
        for s in idle[::2]:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n")  # half a head each
        start = time.monotonic()
        assert exchange(ctx.port, req("GET", "/x")).status == 200
        assert time.monotonic() - start < 2.0
    finally:
        for s in idle:
            s.close()


@scenario("body-413-is-answered-and-the-connection-closed-at-once", "limits")
def _early_413(ctx: Ctx) -> None:
    with Conn(ctx.port) as c:
        c.send(raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 50000000"))
        resp = c.read_response()  # not a byte of the body sent
        problem(413).check(resp, 1)
        assert c.closed_within(TIMEOUT)
    assert ctx.upstream() == []


# ---- more framing (section 3) -------------------------------------------------------------

row("te-capitalized-chunked-is-chunked",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: Chunked", "Connection: close",
        body=b"5\r\nhello\r\n0\r\n\r\n"),
    answers=OK, upstream=(targets("/x"), body_is(5, b"hello")))
refused("te-then-cl", raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: chunked",
                          "Content-Length: 0", body=b"5\r\nhello\r\n0\r\n\r\n"))
refused("te-empty-value", raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding:",
                              "Content-Length: 5", body=b"hello"), status=(400, 501))
refused("te-identity-with-cl", raw("POST /x HTTP/1.1", "Host: gw.test",
                                   "Transfer-Encoding: identity", "Content-Length: 5",
                                   body=b"hello"), status=(400, 501))
refused("te-comma-only", raw("POST /x HTTP/1.1", "Host: gw.test", "Transfer-Encoding: ,chunked",
                             body=b"0\r\n\r\n"), status=(400, 501))
row("cl-leading-zeros-forwarded-intact",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 005", "Connection: close",
        body=b"hello"),
    answers=A((200, 400)), upstream=if_forwarded_intact("/x", b"hello"))
row("get-with-body-keeps-its-framing",
    req("GET", "/x", body=b"hello", close=False) + req("GET", "/after"),
    answers=(OK, OK), upstream=(targets("/x", "/after"),))
row("pipelined-keep-alive-requests-in-order",
    b"".join(req("GET", f"/p{i}", close=False) for i in range(20)) + req("GET", "/p20"),
    answers=tuple(OK for _ in range(21)), closed=True,
    upstream=targets(*(f"/p{i}" for i in range(21))))
row("connection-lists-transfer-encoding-body-intact",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Connection: Transfer-Encoding, close",
        "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    answers=OK, upstream=(targets("/x"), body_is(5, b"hello")))
row("expect-continue-on-http-1.0-sends-no-100",
    raw("POST /x HTTP/1.0", "Host: gw.test", "Content-Length: 5", "Expect: 100-continue",
        body=b"hello"),
    answers=A(200), closed=True, upstream=(targets("/x"), body_is(5, b"hello")))
refused("query-raw-non-ascii", raw(b"GET /x?q=\xc3\xa9 HTTP/1.1", "Host: gw.test"))
refused("query-raw-space", raw("GET /x?a b HTTP/1.1", "Host: gw.test"))
refused("host-duplicate-same-value", raw("GET /x HTTP/1.1", "Host: gw.test", "Host: gw.test"))
row("method-override-header-passes-as-data",  # the gateway routes by the real method
    post("/api/auth/login", "X-HTTP-Method-Override: GET"), answers=limited_by("login"),
    upstream=targets("/api/auth/login"))

refused("http-version-lowercase", raw("GET /x http/1.1", "Host: gw.test"))
row("cl-trailing-space-is-fine",
    raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 5 ", "Connection: close",
        body=b"hello"),
    answers=OK, upstream=(targets("/x"), body_is(5, b"hello", content_length=True)))


@scenario("cl-zero-then-stray-bytes-never-reach-the-upstream", "default")
def _stray_bytes(ctx: Ctx) -> None:
    # The stray bytes are a malformed next request: the gateway may answer the POST and then
    # 400, or refuse the lot; either way it closes, and "hello" never reaches the upstream.
    with Conn(ctx.port) as c:
        c.send(raw("POST /x HTTP/1.1", "Host: gw.test", "Content-Length: 0",
                   body=b"hello\r\n\r\n"))
        c.sock.settimeout(TIMEOUT)
        with contextlib.suppress(ConnectionError):
            while True:
                c._fill()
    statuses = [int(line.split()[1]) for line in c.buf.split(b"\r\n")
                if line.startswith(b"HTTP/1.")]
    assert statuses in ([], [400], [200, 400]), c.buf[:300]
    entries = ctx.upstream()
    only_targets("/x")(entries)
    assert all(e["body_length"] == 0 for e in _complete(entries))


row("chunk-extension-flood-is-bounded",  # CVE-2023-39326 / CVE-2024-22019 class
    CHUNKED_HEAD + b"1;" + b"e" * (256 * 1024) + b"\r\nx\r\n0\r\n\r\n",
    variant="limits", answers=problem((400, 413, 431)), closed=True,
    upstream=nothing_complete())
row("underscore-spellings-of-forwarding-headers-dropped",
    req("GET", "/x", "X_Forwarded_For: 6.6.6.6", "X_Real_IP: 6.6.6.6", "X_Request_ID: forged",
        "Client_IP: 6.6.6.6"),
    answers=OK, upstream=(no_header("X_Forwarded_For"), no_header("X_Real_IP"),
                          no_header("X_Request_ID"), no_header("Client_IP")))
row("rewrite-url-headers-dropped",
    req("GET", "/x", "X-Original-URL: /api/auth/login", "X-Rewrite-URL: /api/auth/login"),
    answers=OK, upstream=(no_header("X-Original-URL"), no_header("X-Rewrite-URL")))

row("connection-close-then-pipelined-request-never-forwarded",  # RFC 9112 9.6; a 400 for
    req("GET", "/first") + req("GET", "/second", close=False),  # bytes after close is safe
    answers=A((200, 400)), closed=True, upstream=only_targets("/first"))
row("http-1.0-without-keep-alive-then-pipelined-never-forwarded",
    raw("GET /first HTTP/1.0", "Host: gw.test") + req("GET", "/second", close=False),
    answers=A((200, 400)), closed=True, upstream=only_targets("/first"))
refused("host-raw-non-ascii", raw(b"GET /x HTTP/1.1", b"Host: ex\xe4mple.com"))

# ---- identity: headers that must survive a Connection: listing (section 3) ---------------

row("connection-cannot-strip-x-forwarded-for",
    req("GET", "/x", "Connection: X-Forwarded-For, X-Real-IP, X-Request-ID", close=False),
    answers=OK, upstream=(header_is("X-Forwarded-For", "127.0.0.1"),
                          header_is("X-Real-IP", "127.0.0.1")))
row("xff-spoofed-trusted-hop-then-real-client",
    req("GET", "/x", "X-Forwarded-For: 127.0.0.1, 203.0.113.7"), variant="trusted",
    answers=OK, upstream=header_is("X-Real-IP", "203.0.113.7"))
row("xff-ipv6-zone-hop-is-not-an-address",
    req("GET", "/x", "X-Forwarded-For: fe80::1%eth0"), variant="trusted",
    answers=OK, upstream=header_is("X-Real-IP", "127.0.0.1"))


@scenario("xff-from-untrusted-cannot-dodge-the-login-limit", "login5")
def _xff_dodge(ctx: Ctx) -> None:
    statuses = [login_as(ctx.port, f"203.0.113.{n}") for n in range(1, 8)]
    assert statuses == [200] * 5 + [429] * 2, statuses
    assert len(_complete(ctx.upstream())) == 5


@scenario("rate-limited-request-never-reaches-the-upstream", "login5-other")
def _limited_not_forwarded(ctx: Ctx) -> None:
    for _ in range(5):
        assert exchange(ctx.port, post("/api/auth/login")).status == 200
    mark = ctx.rec.mark()
    resp = exchange(ctx.port, post("/api/auth/login", body=b"password=hunter2"))
    problem(429, present=("Retry-After",)).check(resp, 6)
    ctx.rec.sync(ctx.port)
    assert ctx.rec.since(mark) == []


# ---- WebSocket frames (section 3) ---------------------------------------------------------

row("ws-key-not-16-bytes-is-400", ws_handshake(key="c2hvcnQ="), variant="ws",
    answers=problem(400))
row("ws-two-keys-is-400", ws_handshake("/ws", f"Sec-WebSocket-Key: {WS_KEY}"), variant="ws",
    answers=problem(400))
row("ws-valid-handshake-accept-value", ws_handshake(), variant="ws",
    answers=A(101, equals=(("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),)))


@scenario("ws-unmasked-client-frame-ends-the-socket", "ws")
def _ws_unmasked(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        c.send(bytes([0x82, 5]) + b"hello")  # FIN + binary, no mask bit
        c.sock.settimeout(3.0)
        try:
            opcode, payload = ws_read_frame(c)
        except ConnectionError:
            return  # closed without a close frame: acceptable
        assert opcode == 0x8, f"frame {opcode:#x} {payload[:20]!r}: the unmasked frame was relayed"
        assert struct.unpack("!H", payload[:2])[0] == 1002


@scenario("ws-oversized-ping-is-closed-1002", "ws")
def _ws_big_ping(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        c.send(ws_frame(b"p" * 200, opcode=0x9))  # control frames carry at most 125 bytes
        assert ws_close_code(c, 3.0) == 1002


@scenario("ws-fragments-over-the-message-limit-are-closed-1009", "ws-limit")
def _ws_fragments(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        first = ws_frame(b"f" * 40 * 1024)
        c.send(bytes([first[0] & 0x7F]) + first[1:])  # FIN clear: more fragments follow
        cont = ws_frame(b"g" * 40 * 1024, opcode=0x0)
        c.send(cont)
        assert ws_close_code(c, 3.0) == 1009


def _rsv1(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


for label, frame, code in (
        ("text-invalid-utf8", ws_frame(b"\xff\xfe", opcode=0x1), 1007),
        ("rsv1-without-extension", _rsv1(ws_frame(b"hello")), 1002),
        ("unknown-opcode", ws_frame(b"hello", opcode=0x3), 1002),
        ("continuation-without-start", ws_frame(b"hello", opcode=0x0), 1002),
        ("close-code-1005-on-the-wire", ws_frame(b"\x03\xed", opcode=0x8), 1002),
        ("close-code-999", ws_frame(b"\x03\xe7", opcode=0x8), 1002)):
    def _ws_protocol_error(ctx: Ctx, frame: bytes = frame, code: int = code) -> None:
        with ws_open(ctx.port) as c:
            c.send(frame)
            assert ws_close_code(c, 3.0) == code
    scenario(f"ws-{label}-is-closed-{code}", "ws")(_ws_protocol_error)


for label in ("content-length", "chunked"):
    def _ws_handshake_body(ctx: Ctx, label: str = label) -> None:
        # A body on the upgrade request must not turn into WebSocket frames: refuse it, or
        # upgrade without reading those bytes as a message.
        frame = ws_frame(b"smuggled", opcode=0x1)
        if label == "chunked":
            extra, body = "Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (
                len(frame), frame)
        else:
            extra, body = f"Content-Length: {len(frame)}", frame
        with Conn(ctx.port) as c:
            c.send(ws_handshake("/ws", extra) + body)
            resp = c.read_response()
            assert resp.status in (101, 400), resp.raw
            if resp.status == 101:
                c.sock.settimeout(1.0)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    _opcode, payload = ws_read_frame(c)
                    assert payload != b"smuggled", "the request body became a WebSocket message"
    scenario(f"ws-handshake-with-{label}-body-is-no-message", "ws")(_ws_handshake_body)


@scenario("ws-text-echo-round-trip", "ws")
def _ws_echo(ctx: Ctx) -> None:
    with ws_open(ctx.port) as c:
        c.send(ws_frame(b"hi there", opcode=0x1))
        c.sock.settimeout(3.0)
        assert ws_read_frame(c) == (0x1, b"hi there")


# --------------------------------------------------------------------------------------------
# the test


def gateway_answer_invariants(resp: Response, variant: str, n: int) -> None:
    """Every answer the gateway makes itself (problem+json) names no software, carries an
    X-Request-ID and the default security headers (where the variant has them)."""
    ctype = (resp.header("Content-Type") or "").split(";")[0].strip()
    if ctype != PROBLEM:
        return
    where = f"answer {n}: {resp.raw[:300]!r}"
    assert resp.header("Server") is None, f"gateway answer names its software; {where}"
    assert resp.header("X-Request-ID"), f"gateway answer without X-Request-ID; {where}"
    if NOSNIFF in VARIANTS[variant].top_extra:
        assert resp.header("X-Content-Type-Options") == "nosniff", (
            f"gateway answer without the default security headers; {where}")


def run_row(r: Row, ctx: Ctx) -> None:
    answers: list[Response] = []
    with Conn(ctx.port, timeout=TIMEOUT) as conn:
        for step in r.send:
            if isinstance(step, Read):
                answers.append(conn.read_response())
            elif isinstance(step, Pause):
                time.sleep(step.seconds)
            else:
                try:
                    conn.send(step)
                except OSError:  # the gateway closed early; what it answered is checked below
                    break
        while len(answers) < len(r.answers):
            answers.append(conn.read_response())
        for n, (want, got) in enumerate(zip(r.answers, answers, strict=True), 1):
            want.check(got, n)
            gateway_answer_invariants(got, r.variant, n)
        if r.closed is True:
            assert conn.closed_within(TIMEOUT), (
                f"connection not closed; unread: {conn.buf[:300]!r}")
        elif r.closed is False:
            assert not conn.closed_within(0.2), "the gateway closed the connection"
    if VARIANTS[r.variant].upstream == "recorder":
        entries = ctx.upstream()
        for fact in (*r.upstream, ALWAYS):
            fact(entries)


@pytest.mark.parametrize("r", [
    pytest.param(r, id=r.id, marks=[pytest.mark.xfail(strict=True, reason=r.xfail)]
                 if r.xfail else [])
    for r in ROWS])
@pytest.mark.integration
def test_attack(r: Row, gateways: Gateways, recorder: Recorder, request) -> None:
    gw = gateways.get(r.variant, lambda: request.getfixturevalue("upstream").url)
    ctx = Ctx(gw, recorder, gw.port, recorder.mark(), r.variant)
    if r.scenario is not None:
        r.scenario(ctx)
    else:
        run_row(r, ctx)


def test_row_ids_are_unique() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
