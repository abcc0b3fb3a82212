"""What the gateway refuses in a request head beyond what llhttp refuses: pure checks over the
parsed head, and the answer to each parse failure.

llhttp (httptools, strict mode) already refuses, measured with raw sockets: Content-Length
with Transfer-Encoding, duplicate Content-Length (even equal), a Content-Length that is not
digits (`+4`, `5, 5`, `1 0`) or overflows, a Transfer-Encoding whose last coding is not
chunked (`xchunked`, `chunked, identity`), Transfer-Encoding on two lines, obs-fold, bare LF,
bare CR, NUL and other controls in a value, a space before the colon, an empty or invalid
field name, lowercase methods, controls in the target, HTTP/1.2, chunk sizes with `0x`, signs,
spaces or overflow, bare LF chunk terminators.

It lets through, and the gateway refuses here with 400: a Transfer-Encoding whose last coding
is not chunked (llhttp refuses it only once the body begins, after the head was handed on;
RFC 9112 6.3), a duplicate Host, a missing Host on
HTTP/1.1 (RFC 9112 3.2), a request that asks for an upgrade and carries a body (llhttp stops
at the body of an upgrade request: its bytes would be read as the next request or as frames).
Lines longer than `limits.max_header_size` (414 for the request line, 431 for a field line)
and more than `limits.max_headers` fields (431) are counted by the connection layer while it
feeds the parser, which has no such bounds, and answered from here. Before a request line
llhttp skips any CR and LF; only empty lines (CRLF, or a bare LF) may come there (RFC 9112
2.2), so a bare CR between requests is refused here (`bare_cr_before_request`,
`bare_crs`): a strict parser in front of the gateway reads such bytes otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeadRefusal:
    """The gateway's answer to a request it cannot read; the connection ends after it."""

    status: int
    detail: str


MALFORMED = HeadRefusal(400, "malformed HTTP request")
LINE_TOO_LONG = HeadRefusal(414, "request line too long")
FIELD_TOO_LONG = HeadRefusal(431, "a request header line is too long")
TOO_MANY_FIELDS = HeadRefusal(431, "too many request headers")
BAD_VERSION = HeadRefusal(505, "only HTTP/1.0 and HTTP/1.1 are supported")
DUPLICATE_HOST = HeadRefusal(400, "more than one Host header")
MISSING_HOST = HeadRefusal(400, "an HTTP/1.1 request needs a Host header")
NOT_CHUNKED_LAST = HeadRefusal(400, "the last transfer coding of a request must be chunked")
UPGRADE_WITH_BODY = HeadRefusal(400, "a request that asks for an upgrade carries no body")


def parse_failure(message: str) -> HeadRefusal:
    """The answer to a head llhttp refused, from its error text (never echoed)."""
    if "Invalid HTTP version" in message:
        return BAD_VERSION
    return MALFORMED


def unfinished_head_refusal(head_bytes: int, max_line: int, max_field: int, max_fields: int
                            ) -> HeadRefusal | None:
    """A head still incomplete after `head_bytes`: refused (431) once it is longer than the
    longest head the bounds allow. Complete lines are checked one by one (`field_refusal`,
    and the request target's length as it arrives); this bounds the line in progress, which
    llhttp buffers whole before it reports it."""
    if head_bytes > max_line + max_field * (max_fields + 1):
        return FIELD_TOO_LONG
    return None


def field_refusal(name: bytes, value: bytes, count: int, max_field: int, max_fields: int
                  ) -> HeadRefusal | None:
    """A complete field line (its `count`-th in the head) against the head bounds."""
    if count > max_fields:
        return TOO_MANY_FIELDS
    if len(name) + len(value) + 2 > max_field:
        return FIELD_TOO_LONG
    return None


def head_refusal(version: tuple[int, int], hosts: int, upgrade_with_body: bool,
                 transfer_encoding: str | None = None) -> HeadRefusal | None:
    """Checks over a complete head that llhttp does not make (or makes only after the head,
    when the request would already be handled): `hosts` is how many Host fields it has,
    `upgrade_with_body` whether llhttp stopped at an upgrade with a body declared,
    `transfer_encoding` its Transfer-Encoding (llhttp refuses two of them)."""
    if transfer_encoding is not None and \
            transfer_encoding.rsplit(",", 1)[-1].strip(" ").lower() != "chunked":
        return NOT_CHUNKED_LAST
    if hosts > 1:
        return DUPLICATE_HOST
    if hosts == 0 and version == (1, 1):
        return MISSING_HOST
    if upgrade_with_body:
        return UPGRADE_WITH_BODY
    return None


_BARE_CR = re.compile(rb"\r(?!\n)")


def bare_cr_before_request(data: bytes) -> bool | None:
    """Whether the empty lines `data` starts with (what llhttp skips before a request line)
    hold a bare CR: True; None when they end in a CR whose LF may be in the next read."""
    i, end = 0, len(data)
    while i < end:
        byte = data[i]
        if byte == 10:  # LF
            i += 1
        elif byte == 13:  # CR
            if i + 1 == end:
                return None
            if data[i + 1] != 10:
                return True
            i += 2
        else:
            return False
    return False


def bare_crs(data: bytes) -> int:
    """How many CRs in `data` are followed by something other than LF (one at the very end is
    not counted: its LF may come next)."""
    return len(_BARE_CR.findall(data)) - data.endswith(b"\r")
