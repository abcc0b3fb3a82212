"""A differential request-smuggling fuzzer: the gateway's framing against two independent ones.

Hypothesis mutates valid requests (header duplication, whitespace, case, obsolete folding,
chunk-size forms, chunk extensions, trailers, bare CR/LF, Transfer-Encoding lists,
Content-Length forms, methods, targets, versions) and sends each, followed by a pipelined
`Connection: close` request, to the gateway over a raw socket. The gateway forwards to the
recording upstream (tests/support/recorder.py, h11, with each request's bytes as received).

For every example:
- the reference framer (tests/support/strict_http.py, RFC 9112, strict) reads the bytes the
  client sent: the requests they hold, in order, up to the first that is not valid;
- every request the upstream received is the reference's request of the same rank (a
  lenient reading that moves no boundary is tolerated and counted): the same method, target,
  body bytes and fuzzed headers (`X-Fz-*`, less those the request's `Connection` names: the
  documented hop-by-hop rewrite); the upstream never receives more
  requests than the reference found, so bytes of one request never become another;
- the bytes the upstream received are framed identically by h11 (the recorder) and by the
  reference framer: one request each, same method, target, headers and body;
- every answer relayed from the upstream names the target of the request at its rank;
- no answer is a 500, and the gateway ends the connection within its timeouts (no hang).

Any disagreement is a smuggling bug. Bounded: 300 examples; full: 100,000 over 4 shards
(scripts/test.sh --full); GATEWAY_FUZZ_EXAMPLES=N runs N. Figures (`-s`): one
`RELIABILITY {...}` line per shard.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.load import report
from tests.support.recorder import Site, gateway_before_recorder
from tests.support.scale import scaled
from tests.support.strict_http import Request, frame

pytestmark = pytest.mark.integration

SHARDS = scaled(1, 4)
# GATEWAY_FUZZ_EXAMPLES overrides the count (all shards together)
EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES") or scaled(300, 100_000)) // SHARDS
HANG = 5.0  # seconds: the gateway's timeouts below are 0.5 s; longer than this is a hang
SENTINEL_TARGET = "/fz-last"
SENTINEL = (f"GET {SENTINEL_TARGET} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
            .encode())



@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    timeouts = "timeouts: {header: 500ms, body: 500ms, idle: 2s}"
    with gateway_before_recorder(tmp_path_factory.mktemp("fuzz"), wire=True,
                                 server_extra=timeouts) as started:
        yield started


# --------------------------------------------------------------------------------------------
# generation: a valid request, then mutations of its bytes

SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
QUERY = st.one_of(st.just(""), st.text("abcxyz0123=&-_", min_size=1, max_size=10).map(
    lambda q: "?" + q))
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 -_=;,./:\"'()", max_size=16).map(str.strip)
SMUGGLE = (b"GET /fz/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n",
           b"0\r\n\r\nGET /fz/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n",
           b"\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")
BODY = st.one_of(st.just(b""), st.binary(max_size=40), st.sampled_from(SMUGGLE),
                 st.tuples(st.binary(max_size=10), st.sampled_from(SMUGGLE)).map(b"".join))

def mostly(usual: str, *others: str, percent: int = 85) -> st.SearchStrategy[str]:
    """`usual` `percent`% of the time, else one of `others`."""
    return st.integers(0, 99).flatmap(
        lambda n: st.just(usual) if n < percent else st.sampled_from(others))


METHODS = st.one_of(st.sampled_from(["GET", "POST"]), mostly(
    "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "get", "FOO", "TRACE", "CONNECT", "G ET",
    "GET\t", "P\x00ST", percent=30))
VERSIONS = mostly("HTTP/1.1", "HTTP/1.0", "HTTP/1.0", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0",
                  "http/1.1", "HTTP/01.1", "HTTP/1.1 ", "HTTP/1", "HTTP/1.1\t", "HTTP/1.10")
TE_FORMS = mostly("chunked", "Chunked", "CHUNKED", " chunked", "chunked ", "chunked\t",
                  "chunked, chunked", "gzip, chunked", "chunked, gzip", "identity",
                  "identity, chunked", ",chunked", "chunked,", "x-chunked", "chunked;q=1",
                  "\"chunked\"", "chunk", "", "chunked\x0b", percent=70)


def cl_forms(n: int) -> st.SearchStrategy[str]:
    return mostly(str(n), f"+{n}", f"0{n}", f"{n} ", f" {n}", f"{n},{n}", f"{n}, {n + 1}",
                  hex(n), f"{n}.0", "-1", f"{n}e0", "9" * 20, "", f"{n}\x0b", f"{n + 3}",
                  f"{max(0, n - 1)}", "0", "00" + str(n), percent=70)


def size_forms(size: int) -> st.SearchStrategy[str]:
    h = f"{size:x}"
    return mostly(h, h.upper(), "000" + h, "0x" + h, h + " ", h + "\t", " " + h, h + ";a=b",
                  h + ';a="q;x"', h + " ;a", h + ";", h + ";a=", "-" + h, "0" * 20 + h,
                  h + "\x00", "+" + h, h + ";a=b;c", f"{size + 1:x}", h + '; a = "b c"',
                  h + ";a=b c", percent=80)


@st.composite
def chunked_body(draw, body: bytes) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=3))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    out = b""
    for piece in pieces:
        out += draw(size_forms(len(piece))).encode("latin-1") + b"\r\n"
        out += piece + b"\r\n"
    out += draw(mostly("0", "00", "0;x=y", "0 ", "0\t;x", "000", "0;", percent=80)).encode()
    out += b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-Fz-T: t", b"Cookie: session=attacker",
                                     b"Content-Length: 5", b"Transfer-Encoding: chunked",
                                     b"Host: evil.test", b" folded", b"X-Fz-0: trailer"]))
        out += b"\r\n"
    return out + b"\r\n"


OPS = ("case", "ows", "space-before-colon", "dup", "dup-other", "fold", "eol", "eol-body",
       "ctl-in-value", "drop-host", "add-te", "add-cl", "connection", "expect", "lf-only",
       "empty-line-first")


@st.composite
def fuzzed(draw) -> bytes:
    """One request's bytes: valid, then mutated."""
    method = draw(METHODS)
    target = "/fz/" + draw(SEGMENT) + draw(QUERY)
    target = draw(mostly(target, "http://gw.test" + target, "*", "gw.test:80",
                         target + "#frag", target + " x", target.replace("/fz/", "/fz//"),
                         target + "\x80", "fz/" + target[4:]))
    version = draw(VERSIONS)
    headers: list[list[str]] = [["Host", ":", " ", "gw.test"]]
    headers += [[f"X-Fz-{i}", ":", " ", draw(VALUE)] for i in range(draw(st.integers(0, 3)))]
    body = draw(BODY)
    framing = draw(st.sampled_from(["none", "cl", "cl", "chunked", "chunked"]))
    wire_body = b""
    if framing == "cl":
        headers.append(["Content-Length", ":", " ", draw(cl_forms(len(body)))])
        wire_body = body
    elif framing == "chunked":
        headers.append(["Transfer-Encoding", ":", " ", draw(TE_FORMS)])
        wire_body = draw(chunked_body(body))
    ops = draw(st.lists(st.sampled_from(OPS), max_size=draw(st.sampled_from([0, 1, 1, 2, 3]))))
    pre = b""
    for op in ops:
        i = draw(st.integers(0, len(headers) - 1))
        h = headers[i]
        if op == "case":
            h[0] = draw(st.sampled_from([h[0].lower(), h[0].upper(), h[0].swapcase()]))
        elif op == "ows":
            h[2] = draw(st.sampled_from(["", "  ", "\t", " \t "]))
            h[3] += draw(st.sampled_from([" ", "\t", "  "]))
        elif op == "space-before-colon":
            h[0] += draw(st.sampled_from([" ", "\t"]))
        elif op == "dup":
            headers.insert(draw(st.integers(0, len(headers))), list(h))
        elif op == "dup-other":
            headers.insert(draw(st.integers(0, len(headers))),
                           [h[0], ":", " ", draw(st.sampled_from(["0", "5", "chunked",
                                                                  "evil.test", "x"]))])
        elif op == "fold":
            h[3] += draw(st.sampled_from(["\r\n folded", "\r\n\tfolded", "\r\n chunked",
                                          "\r\n : x"]))
        elif op == "ctl-in-value":
            h[3] += draw(st.sampled_from(["\x00x", "\rx", "\x7f", "\x0bx", "\x1b", "\nx"]))
        elif op == "drop-host" and headers[0][0] == "Host" and len(headers) > 1:
            headers.pop(0)
        elif op == "add-te":
            headers.append(["Transfer-Encoding", ":", " ", draw(TE_FORMS)])
        elif op == "add-cl":
            headers.append(["Content-Length", ":", " ",
                            draw(cl_forms(len(wire_body)))])
        elif op == "connection":
            headers.append(["Connection", ":", " ", draw(st.sampled_from([
                "X-Fz-0", "close", "keep-alive", "Content-Length", "Transfer-Encoding",
                "keep-alive, X-Fz-1", "Host", "upgrade"]))])
        elif op == "expect":
            headers.append(["Expect", ":", " ", draw(st.sampled_from(
                ["100-continue", "100-Continue", "200-ok"]))])
        elif op == "empty-line-first":
            pre = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n"]))
    head = (f"{method} {target} {version}\r\n"
            + "".join(f"{n}{c}{s}{v}\r\n" for n, c, s, v in headers) + "\r\n").encode("latin-1")
    if "eol" in ops:  # one line ending of the head becomes a bare LF, a bare CR, or CR CR LF
        head = _replace_nth(head, b"\r\n", draw(st.integers(0, head.count(b"\r\n") - 1)),
                            draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"])))
    if "lf-only" in ops:
        head = head.replace(b"\r\n", b"\n")
    if "eol-body" in ops and wire_body.count(b"\r\n"):
        wire_body = _replace_nth(wire_body, b"\r\n",
                                 draw(st.integers(0, wire_body.count(b"\r\n") - 1)),
                                 draw(st.sampled_from([b"\n", b"\r", b""])))
    return pre + head + wire_body


def _replace_nth(data: bytes, old: bytes, n: int, new: bytes) -> bytes:
    at = -1
    for _ in range(n + 1):
        at = data.index(old, at + 1)
    return data[:at] + new + data[at + len(old):]


# What the fuzzer found, run first every time (test_smuggling_regressions.py has them as raw
# cases): a refused CONNECT's Content-Length body forwarded as the next request; field lines
# whose names differ only in case losing values upstream; an empty chunk-extension value,
# accepted by the gateway and then tolerated by the reference framer.
FOUND_CONNECT = (b"CONNECT /fz/0 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 44\r\n\r\n"
                 b"GET /fz/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n")
FOUND_CASE_DUPLICATES = (b"GET /fz/0 HTTP/1.1\r\nx-fz-0: 0\r\nHost: gw.test\r\nX-Fz-0: \r\n"
                         b"\r\n")
FOUND_EMPTY_CHUNK_EXT = (b"GET /fz/0 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n1;a=\r\n\x00\r\n0\r\n\r\n")


# --------------------------------------------------------------------------------------------
# the exchange and its checks


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    head_body: bool = False  # a body where the answer to a HEAD was due

    @property
    def gateways_own(self) -> bool:
        return self.headers.get("content-type") == "application/problem+json"


def read_all(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """Everything the gateway sends until it closes; (bytes, closed before `deadline`)."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def parse_answers(data: bytes, methods: list[str]) -> list[Answer]:
    """The final answers in `data` (1xx skipped); a HEAD's answer has no body."""
    answers: list[Answer] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"a truncated answer: {data[pos:pos + 200]!r}"
        lines = data[pos:end].decode("latin-1").split("\r\n")
        assert lines[0][:9] in ("HTTP/1.1 ", "HTTP/1.0 "), f"not an HTTP answer: {lines[0]!r}"
        status = int(lines[0][9:12])
        headers = {k.strip().lower(): v.strip()
                   for k, v in (ln.split(":", 1) for ln in lines[1:])}
        pos = end + 4
        if 100 <= status < 200:
            continue
        rank = len(answers)
        head_request = rank < len(methods) and methods[rank] == "HEAD"
        if head_request and "content-length" in headers and not data.startswith(b"HTTP/", pos) \
                and len(data) - pos == int(headers["content-length"]):
            # a body after the answer to a HEAD, then the end of the connection: an answer the
            # gateway made itself to a later request of the same connection (see below)
            length = len(data) - pos
            answers.append(Answer(status, headers, data[pos:pos + length], head_body=True))
            break
        if head_request or status in (204, 304):
            length = 0
        elif "content-length" in headers:
            length = int(headers["content-length"])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = _dechunk(data, pos)
            answers.append(Answer(status, headers, body))
            continue
        else:  # until the end of the connection
            length = len(data) - pos
        answers.append(Answer(status, headers, data[pos:pos + length]))
        pos += length
    return answers


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    body = b""
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        body += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
        if size == 0:
            return body, pos


def rewritten(target: str) -> str:
    """The target the upstream gets, by the documented normalization (README, "What the
    gateway does to a request") of what the fuzzer generates: runs of slashes become one."""
    path, sep, query = target.partition("?")
    return re.sub("/{2,}", "/", path) + sep + query


def fuzzed_headers(req: Request | dict) -> dict[str, str]:
    """The `X-Fz-*` headers a request carries (combined per name, lower-case names; empty
    field lines count only in that the name is present: RFC 9110 5.6.1, empty list elements
    are ignored), less those its Connection header names (hop-by-hop, removed by the
    gateway)."""
    pairs = (req.headers if isinstance(req, Request)
             else [(k, v) for k, v in req["headers"]])
    nominated = {t.strip().lower() for k, v in pairs if k.lower() == "connection"
                 for t in v.split(",")}
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        if k.lower().startswith("x-fz-") and k.lower() not in nominated:
            out.setdefault(k.lower(), []).append(v)
    return {k: ", ".join(x for x in v if x) for k, v in out.items()}


def check_forwarded_framing(entry: dict) -> Request:
    """h11 (the recorder) and the reference framer read the forwarded bytes identically."""
    assert "error" not in entry, f"the upstream could not frame what it received: {entry}"
    wire = entry["wire"].encode("latin-1")
    reqs, rest = frame(wire)
    assert len(reqs) == 1 and rest == "", (
        f"the reference framer reads {len(reqs)} requests ({rest}) in the bytes h11 read as "
        f"one: {wire[:300]!r}")
    ref = reqs[0]
    assert (ref.method, ref.target) == (entry["method"], entry["target"])
    assert [(k.lower(), v) for k, v in ref.headers] == [
        (k.lower(), v) for k, v in entry["headers"]], wire[:300]
    assert len(ref.body) == entry["body_length"]
    assert ref.body[:200] == entry["body_head"].encode("latin-1")
    return ref


def check_example(sent: bytes, received: bytes, closed: bool, entries: list[dict],
                  stats: collections.Counter) -> None:
    where = f"sent {sent[:400]!r}"
    assert closed, f"the gateway did not end the connection within {HANG} s; {where}"
    expected, rest = frame(sent)
    answers = parse_answers(received, [r.method for r in expected])
    assert all(a.status != 500 for a in answers), f"a 500; {where}"
    forwarded = [check_forwarded_framing(entry) for entry in entries]
    try:
        match(expected, rest, answers, forwarded, where)
    except AssertionError as strict:
        # forwarded as only a lenient parser reads it (no boundary moved): tolerated, counted
        expected, rest = frame(sent, lenient=True)
        try:
            match(expected, rest, answers, forwarded, where)
        except AssertionError:
            raise strict from None
        stats["tolerated_leniency"] += 1
    stats["examples"] += 1
    stats["forwarded_requests"] += len(entries)
    stats["fuzzed_forwarded" if any(e["target"] != SENTINEL_TARGET for e in entries)
          else "fuzzed_not_forwarded"] += 1
    stats["reference_" + (rest.split(":")[0] if rest else "valid")] += 1
    for answer in answers:
        stats[f"answer_{answer.status}"] += 1
        stats["answer_to_head_with_body"] += answer.head_body


def match(expected: list[Request], rest: str, answers: list[Answer], forwarded: list[Request],
          where: str) -> None:
    """The forwarded requests are the client's requests (as the reference reads them) in
    order, less those the gateway answered itself (a refusal that keeps the connection, such
    as 417, skips one); each relayed answer is the one to the request of its rank."""
    assert len(forwarded) <= len(expected), (
        f"the upstream received {len(forwarded)} requests where the reference reads "
        f"{len(expected)} ({rest or 'complete'}): "
        f"{[(r.method, r.target) for r in forwarded]}; {where}")
    j = 0
    for rank, want in enumerate(expected):
        if j < len(forwarded) and (forwarded[j].method, forwarded[j].target) == (
                want.method, rewritten(want.target)):
            got = forwarded[j]
            assert got.body == want.body, (
                f"request {rank}: upstream body {got.body!r}, sent {want.body!r}; {where}")
            assert fuzzed_headers(got) == fuzzed_headers(want), (
                f"request {rank}: upstream headers {fuzzed_headers(got)}, sent "
                f"{fuzzed_headers(want)}; {where}")
            j += 1
        elif rank < len(answers):
            assert answers[rank].gateways_own, (
                f"request {rank} ({want.method} {want.target}) was answered "
                f"{answers[rank].status} but never forwarded; {where}")
    assert j == len(forwarded), (
        f"the upstream received {[(r.method, r.target) for r in forwarded[j:]]}, which the "
        f"client never sent as requests in that order; {where}")
    for rank, answer in enumerate(answers):
        if (answer.status == 200 and answer.body
                and answer.headers.get("content-type") == "application/json"):
            relayed = json.loads(answer.body)
            assert (rank < len(expected)
                    and relayed["target"] == rewritten(expected[rank].target)), (
                f"answer {rank} relays the upstream's answer to {relayed['target']}; {where}")


@pytest.mark.parametrize("shard", range(SHARDS))
def test_the_upstream_frames_every_forwarded_request_as_the_client_sent_it(
        site: Site, shard: int) -> None:
    stats: collections.Counter = collections.Counter()
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(fuzzed())
    @example(FOUND_CONNECT)
    @example(FOUND_CASE_DUPLICATES)
    @example(FOUND_EMPTY_CHUNK_EXT)
    def one(data: bytes) -> None:
        mark = site.rec.mark()
        sent = data + SENTINEL
        with socket.create_connection(("127.0.0.1", site.gw.port), timeout=HANG) as sock:
            with contextlib.suppress(OSError):  # closed early: what it answered is checked
                sock.sendall(sent)
            received, closed = read_all(sock, time.monotonic() + HANG)
        check_example(sent, received, closed, site.rec.since(mark), stats)

    one()
    stats["seconds"] = round(time.monotonic() - started)
    report("smuggling-fuzz", shard=shard, **dict(sorted(stats.items())))
    assert stats["fuzzed_forwarded"] > 0 and stats["fuzzed_not_forwarded"] > 0
