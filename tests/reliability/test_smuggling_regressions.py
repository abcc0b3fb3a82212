"""Disagreements the smuggling fuzzer (test_smuggling_fuzz.py) found, kept as raw-socket cases:
the exact answer, the connection's end, and what the upstream received.

- A refused CONNECT kept its connection open, and llhttp had read what followed the CONNECT
  head as tunnel data rather than as the body its Content-Length announced: that "body" was
  then parsed as the next request and forwarded (`CONNECT /x` + `Content-Length: 44` + a
  44-byte `GET /smuggled ...`: the upstream received `GET /smuggled`). Fixed in
  gateway/admission.py: a refused CONNECT ends the connection.
- Field lines whose names differ only in case (`x-a: 1`, then `X-A: 2`) reach the upstream
  as the last one alone (`X-A: 2`): aiohttp's ClientSession._prepare_headers remembers names
  in a case-sensitive set over a case-insensitive multidict. A header a rate limit is keyed
  by is then decided on one value while the upstream sees another. Fixed by the new data
  plane's upstream client (it writes the request head itself).
- A bare CR between two requests (`...\r\n\r\n` `\r` `GET /fz-last ...`) was skipped by
  llhttp, which skips any CR or LF before a request line, and the request after it
  forwarded; a strict parser (tests/support/strict_http.py, as a strict proxy in front would)
  reads the CR as invalid and the bytes after it as no request. Only empty lines (CRLF, or a
  bare LF) may come there (RFC 9112 2.2): fixed in gateway/http/protocol.py (with
  framing.py's `bare_cr_before_request` and `bare_crs`), in one read or across two.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.client import Conn
from tests.support.recorder import Site, gateway_before_recorder

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("reliability-regressions")]

SMUGGLED = b"GET /fz/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"



@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    with gateway_before_recorder(tmp_path_factory.mktemp("regressions")) as started:
        yield started


@pytest.mark.parametrize("head", [
    b"CONNECT /fz/0 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED),
    b"CONNECT /fz/0 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    b"CONNECT /fz/0 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"CONNECT /fz/0 HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED),
], ids=["content-length-body", "no-body", "chunked", "http-1.0"])
def test_a_refused_connect_ends_the_connection_and_nothing_behind_it_is_forwarded(
        site: Site, head: bytes) -> None:
    mark = site.rec.mark()
    with Conn(site.gw.port) as conn:
        conn.send(head + SMUGGLED)
        resp = conn.read_response()
        # refused: 405 (CONNECT is not allowed), or 400 where the parser refuses a body on a
        # request that asks for a tunnel
        assert resp.is_problem(405) or resp.is_problem(400), resp.raw[:300]
        if b"HTTP/1.1\r\n" in head:  # (an HTTP/1.0 connection closes without saying so)
            assert resp.header("Connection") == "close"
        assert conn.closed_within(3.0), f"not closed; unread: {conn.buf[:200]!r}"
    site.rec.sync(site.gw.port)
    assert site.rec.since(mark) == [], "bytes behind a refused CONNECT reached the upstream"


@pytest.mark.parametrize("lines", [
    (b"x-fz-a: 1", b"X-Fz-A: 2"),
    (b"X-Tenant: alice", b"x-tenant: bob"),
    (b"x-fz-a: 0", b"X-Fz-A: "),
], ids=["two-values", "rate-limit-key-header", "value-then-empty"])
def test_field_lines_differing_only_in_case_all_reach_the_upstream(
        site: Site, lines: tuple[bytes, bytes]) -> None:
    mark = site.rec.mark()
    request = (b"GET /fz/case HTTP/1.1\r\nHost: gw.test\r\n" + b"\r\n".join(lines)
               + b"\r\nConnection: close\r\n\r\n")
    with Conn(site.gw.port) as conn:
        conn.send(request)
        assert conn.read_response().status == 200
    (entry,) = site.rec.since(mark)
    name = lines[0].split(b":")[0].decode().lower()
    sent = [line.split(b":", 1)[1].strip().decode() for line in lines]
    assert [v for k, v in entry["headers"] if k.lower() == name] == sent


FIRST = b"GET /fz/first HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\n\r\n"
LAST = b"GET /fz-last HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"


def _targets(site: Site, mark: int) -> list[str]:
    site.rec.sync(site.gw.port)
    return [entry["target"] for entry in site.rec.since(mark)]


@pytest.mark.parametrize("first", [
    FIRST,  # the fuzzer's case
    # a body whose CRs are not bare: they must not hide the bare one after it
    b"POST /fz/first HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\r\na\r\nb",
], ids=["no-body", "body-with-crlf"])  # (after a chunked request the connection ends anyway)
def test_a_bare_cr_between_requests_in_one_read_is_refused_and_nothing_after_it_forwarded(
        site: Site, first: bytes) -> None:
    mark = site.rec.mark()
    with Conn(site.gw.port) as conn:
        conn.send(first + b"\r" + LAST)
        assert conn.read_response().is_problem(400)
        assert conn.closed_within(3.0)
    assert "/fz-last" not in _targets(site, mark)


@pytest.mark.parametrize("first, then", [
    (FIRST, b"\r" + LAST),  # the CR begins the next read
    (FIRST + b"\r", LAST),  # the CR ends the read with the first request
    (FIRST + b"\r\n\r", LAST),  # after an empty line
], ids=["cr-begins-the-read", "cr-ends-the-read", "after-an-empty-line"])
def test_a_bare_cr_between_requests_across_reads_is_refused(site: Site, first: bytes,
                                                            then: bytes) -> None:
    mark = site.rec.mark()
    with Conn(site.gw.port) as conn:
        conn.send(first)
        assert conn.read_response().status == 200
        conn.send(then)
        assert conn.read_response().is_problem(400)
        assert conn.closed_within(3.0)
    assert _targets(site, mark) == ["/fz/first"]


@pytest.mark.parametrize("between", [b"", b"\r\n", b"\n", b"\r\n\n\r\n"],
                         ids=["none", "crlf", "lf", "mixed"])
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
def test_empty_lines_and_bodies_with_bare_crs_between_requests_are_served(
        site: Site, between: bytes, split: bool) -> None:
    body = b"a\rb\r\rc\r"  # bare CRs, the last one ending the body
    post = (b"POST /fz/post HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body))
    mark = site.rec.mark()
    with Conn(site.gw.port) as conn:
        if split:
            conn.send(post + between)
            assert conn.read_response().status == 200
            conn.send(LAST)
        else:
            conn.send(post + between + LAST)
            assert conn.read_response().status == 200
        assert conn.read_response().status == 200
    assert _targets(site, mark) == ["/fz/post", "/fz-last"]
