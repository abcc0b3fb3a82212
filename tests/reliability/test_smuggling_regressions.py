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
