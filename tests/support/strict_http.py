"""A strict HTTP/1.1 request framer (RFC 9112), written for the tests from the RFC's grammar:
the reference the smuggling fuzzer (tests/reliability/test_smuggling_fuzz.py) holds the
gateway's framing to, independent of llhttp (the gateway's parser) and of h11 (the recording
upstream's).

`frame(data)` splits bytes into requests until the first one that is not valid HTTP/1.1 (or
not whole yet): where a lenient parser and a strict one could disagree about where a request
ends, this one refuses. It accepts only what has a single reading:
- request line `method SP target SP HTTP/1.x` (runs of SP tolerated, RFC 9112 3), origin-form
  targets of visible ASCII; empty lines (CRLF or LF) before a request line are skipped
  (RFC 9112 2.2);
- field lines `token ":" OWS value OWS` ended by CRLF, no obs-fold, no bare CR or LF, no NUL
  or other control in values;
- exactly one Host in HTTP/1.1, at most one in HTTP/1.0;
- Transfer-Encoding only in HTTP/1.1, only the single coding `chunked`, never with
  Content-Length; Content-Length on one field line, digits only;
- chunk sizes of at most 16 significant hex digits (any leading zeros), chunk extensions
  `;name[=token|quoted-string]` (an empty value tolerated), trailer fields as field lines
  (never part of the request's headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TCHAR + rb"+\Z")
REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) +(/[\x21-\x7e]*) +HTTP/(1\.[01])\Z")
FIELD_LINE = re.compile(rb"(" + TCHAR + rb"+):[ \t]*((?:[\x21-\x7e\x80-\xff]"
                        rb"(?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*\Z")
QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# An empty value after `=` is tolerated (llhttp accepts it): it moves no boundary.
CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + TCHAR + rb"+(?:[ \t]*=[ \t]*(?:" + TCHAR
                       + rb"*|" + QUOTED + rb"))?)*\Z")
HEX = re.compile(rb"0*([0-9A-Fa-f]{1,16})(?![0-9A-Fa-f])|0+(?![0-9A-Fa-f])")
MAX_HEAD = 64 * 1024

# The lenient reading (`lenient=True`) accepts what parsers commonly tolerate where no
# boundary can move: any chunk extension without control characters, any byte but NUL, CR and
# LF in a field value, whitespace at the end of the request line, and a chunked HTTP/1.0
# request as the last one of its connection. A gateway that forwards what
# only the lenient reading accepts, exactly as it reads it, is lenient, not desynchronized.
LENIENT_REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) +(/[\x21-\x7e]*) +HTTP/(1\.[01])[ \t]*\Z")
LENIENT_FIELD_LINE = re.compile(rb"(" + TCHAR + rb"+):[ \t]*((?:[^\x00\r\n \t]"
                                rb"(?:[^\x00\r\n]*[^\x00\r\n \t])?)?)[ \t]*\Z")
LENIENT_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?\Z")


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0  # bytes of `data` this request took, head and body
    last: bool = False  # the connection ends after it (lenient reading of TE in HTTP/1.0)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Invalid(ValueError):
    """Not a valid HTTP/1.1 request (the reason is the message)."""


class Incomplete(ValueError):
    """A valid beginning of a request that needs more bytes."""


def frame(data: bytes, lenient: bool = False) -> tuple[list[Request], str]:
    """The requests `data` holds, in order, and how the rest ends: "" when `data` ends exactly
    after the last request, "incomplete" when a valid request is cut short, else "invalid:
    <reason>" for the first byte sequence that is not a request."""
    requests: list[Request] = []
    offset = 0
    while offset < len(data):
        try:
            req = parse_one(data, offset, lenient)
        except Incomplete:
            return requests, "incomplete"
        except Invalid as exc:
            return requests, f"invalid: {exc}"
        requests.append(req)
        offset += req.size
        if req.last:
            return requests, "closed after a Transfer-Encoding in HTTP/1.0"
    return requests, ""


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    """The line at `pos` (without CRLF) and the position after it; a bare LF is invalid, a
    CR not followed by LF is invalid."""
    end = data.find(b"\n", pos)
    if end < 0:
        if b"\r" in data[pos:-1] or len(data) - pos > MAX_HEAD:
            raise Invalid("bare CR or overlong line")
        raise Incomplete
    if end == pos or data[end - 1:end] != b"\r":
        raise Invalid("bare LF")
    line = data[pos:end - 1]
    if b"\r" in line:
        raise Invalid("bare CR")
    return line, end + 1


def _fields(data: bytes, pos: int, lenient: bool = False
            ) -> tuple[list[tuple[str, str]], int]:
    field_line = LENIENT_FIELD_LINE if lenient else FIELD_LINE
    fields = []
    while True:
        line, pos = _line(data, pos)
        if line == b"":
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            raise Invalid("obs-fold")
        m = field_line.match(line)
        if not m:
            raise Invalid(f"field line {line[:40]!r}")
        fields.append((m.group(1).decode("latin-1"), m.group(2).decode("latin-1")))


def parse_one(data: bytes, offset: int = 0, lenient: bool = False) -> Request:
    pos = offset
    # empty lines before a request line (RFC 9112 2.2): CRLF, or a bare LF, which llhttp and
    # most servers also skip; either way the line belongs to no request
    while data.startswith((b"\r\n", b"\n"), pos):
        pos += 2 if data[pos] == 13 else 1
    if pos >= len(data) or data[pos:] == b"\r":
        raise Incomplete
    line, pos = _line(data, pos)
    m = (LENIENT_REQUEST_LINE if lenient else REQUEST_LINE).match(line)
    if not m:
        raise Invalid(f"request line {line[:60]!r}")
    method, target, version = (g.decode("latin-1") for g in m.groups())
    headers, pos = _fields(data, pos, lenient)
    req = Request(method, target, version, headers)
    hosts = req.values("Host")
    if len(hosts) > 1 or (version == "1.1" and len(hosts) != 1):
        raise Invalid("Host")
    te, cl = req.values("Transfer-Encoding"), req.values("Content-Length")
    if te:
        if version != "1.1" and not lenient:
            raise Invalid("Transfer-Encoding in HTTP/1.0")
        # lenient: framed as chunked, and nothing after it is read (RFC 9112 6.1: the server
        # closes the connection after responding)
        req.last = version != "1.1"
        if cl:
            raise Invalid("Transfer-Encoding with Content-Length")
        codings = [c.strip().lower() for v in te for c in v.split(",")]
        if codings != ["chunked"]:
            raise Invalid(f"transfer codings {codings}")
        req.chunked = True
        req.body, req.trailers, pos = _chunked(data, pos, lenient)
    elif cl:
        if len(cl) != 1 or not cl[0].isdigit() or not cl[0].isascii() or len(cl[0]) > 15:
            raise Invalid(f"Content-Length {cl}")
        length = int(cl[0])
        if len(data) - pos < length:
            raise Incomplete
        req.body = data[pos:pos + length]
        pos += length
    req.size = pos - offset
    return req


def _chunked(data: bytes, pos: int, lenient: bool = False
             ) -> tuple[bytes, list[tuple[str, str]], int]:
    chunk_ext = LENIENT_CHUNK_EXT if lenient else CHUNK_EXT
    body = bytearray()
    while True:
        line, pos = _line(data, pos)
        m = HEX.match(line)
        if not m or not chunk_ext.match(line[m.end():]):
            raise Invalid(f"chunk size line {line[:40]!r}")
        size = int(m.group(0), 16)  # leading zeros are fine: they overflow nothing
        if size == 0:
            trailers, pos = _fields(data, pos, lenient)
            return bytes(body), trailers, pos
        if len(data) - pos < size + 2:
            if len(data) - pos > size and data[pos + size:pos + size + 1] != b"\r":
                raise Invalid("chunk data longer than its size")
            raise Incomplete
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise Invalid("chunk data not followed by CRLF")
        body += data[pos:pos + size]
        pos += size + 2
