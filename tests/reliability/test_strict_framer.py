"""The smuggling fuzzer's own checks catch what they are there to catch: the reference framer
(tests/support/strict_http.py) on known cases, and the fuzzer's verdict on a forged smuggle."""

from __future__ import annotations

import collections

import pytest

from tests.reliability.test_smuggling_fuzz import SENTINEL, check_example
from tests.support.strict_http import frame

HOST = b"Host: gw.test\r\n"


@pytest.mark.parametrize(("data", "requests", "rest"), [
    (b"GET / HTTP/1.1\r\n" + HOST + b"\r\n", 1, ""),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello", 1, ""),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5;a=\"b\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", 1, ""),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhel", 0, "incomplete"),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     0, "invalid: Transfer-Encoding with Content-Length"),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 0, "invalid: obs-fold"),
    (b"GET / HTTP/1.1\n" + HOST + b"\r\n", 0, "invalid: bare LF"),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 0,
     "invalid: transfer codings ['gzip', 'chunked']"),
    (b"GET / HTTP/1.1\r\n" + HOST + b"\r\nGET /b HTTP/1.1\r\n" + HOST + b"\r\n", 2, ""),
])
def test_the_reference_framer(data: bytes, requests: int, rest: str) -> None:
    got, got_rest = frame(data)
    assert (len(got), got_rest) == (requests, rest)


def entry(wire: bytes) -> dict:
    (req,), _ = frame(wire)
    return {"method": req.method, "target": req.target, "headers": req.headers,
            "body_length": len(req.body), "body_head": req.body[:200].decode("latin-1"),
            "wire": wire.decode("latin-1")}


def test_a_smuggled_request_is_a_disagreement() -> None:
    # CL.TE: a gateway that framed by Transfer-Encoding would forward the tail as a request
    sent = (b"POST /fz/a HTTP/1.1\r\n" + HOST + b"Content-Length: 6\r\n\r\n"
            b"0\r\n\r\nGET /fz/smuggled HTTP/1.1\r\n" + HOST + b"\r\n" + SENTINEL)
    forwarded = [entry(b"POST /fz/a HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n"),
                 entry(b"GET /fz/smuggled HTTP/1.1\r\n" + HOST + b"\r\n")]
    with pytest.raises(AssertionError, match=r"upstream body|never sent"):
        check_example(sent, b"", True, forwarded, collections.Counter())


def test_a_forwarded_body_that_differs_is_a_disagreement() -> None:
    sent = b"POST /fz/a HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello" + SENTINEL
    forwarded = [entry(b"POST /fz/a HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\nhell")]
    with pytest.raises(AssertionError, match="upstream body"):
        check_example(sent, b"", True, forwarded, collections.Counter())


def test_a_hang_is_a_disagreement() -> None:
    with pytest.raises(AssertionError, match="did not end the connection"):
        check_example(b"GET /fz/a HTTP/1.1\r\n" + HOST + b"\r\n", b"", False, [],
                      collections.Counter())
