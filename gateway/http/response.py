"""HTTP/1.1 response heads and whole answers as bytes: what the connection layer writes.

The gateway invents no header a response did not choose: no `Server` (it would name the
software), no default `Content-Type` (it would change how a browser treats an upstream's body).
It adds only what HTTP/1.1 framing needs: `Date`, `Content-Length` or `Transfer-Encoding:
chunked`, and `Connection` when the connection ends (or an HTTP/1.0 client keeps it).

Every answer is sent as HTTP/1.1, the version this server speaks (RFC 9110 6.2), whatever the
request line said. A header value holding CR or LF is refused here (never written): one would
split the response.

Pure functions and one small value class (`Answer`): the connection layer
(http/protocol.py) decides keep-alive and writes the bytes, in one write for a whole answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

# statuses whose responses never carry a body (RFC 9110 6.4.1)
BODYLESS_STATUSES = frozenset({204, 304})

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_second = -1
_date_line = ""


class HeaderInjection(ValueError):
    """A response header name or value holds CR or LF."""


def date_line() -> str:
    """`Date: ...\\r\\n` for the current second (formatted once a second, not per response)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return _date_line


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def encode_head(status: int, reason: str | None, headers: Iterable[tuple[str, str]],
                extra: str = "", date: bool = True) -> bytes:
    """The status line, `headers`, `extra` (already CRLF-terminated lines) and, with `date`,
    `Date`, ending in the blank line."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if "\n" in fields.replace("\r\n", "") or "\r" in fields.replace("\r\n", ""):
        raise HeaderInjection("a response header holds CR or LF")
    line = f"HTTP/1.1 {status} {reason or reason_phrase(status)}\r\n"
    if date:
        extra += date_line()
    return (line + fields + extra + "\r\n").encode("utf-8", "surrogateescape")


def connection_line(keep_alive: bool, version: tuple[int, int]) -> str:
    """The `Connection` field this answer needs: `close` when the connection ends after it,
    `keep-alive` for an HTTP/1.0 client that keeps it; none otherwise."""
    if not keep_alive:
        return "Connection: close\r\n"
    if version < (1, 1):
        return "Connection: keep-alive\r\n"
    return ""


class Answer:
    """A complete response the gateway makes itself: status, headers, body."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                 close: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close  # the connection ends after it

    def encode(self, keep_alive: bool, version: tuple[int, int], head_only: bool) -> bytes:
        """The whole answer as bytes: head and body, one write. `head_only` for HEAD."""
        status = self.status
        extra = connection_line(keep_alive, version)
        if status not in BODYLESS_STATUSES:
            extra += f"Content-Length: {len(self.body)}\r\n"
        head = encode_head(status, None, self.headers, extra)
        if head_only or status in BODYLESS_STATUSES:
            return head
        return head + self.body
