"""The plain-HTTP listener of `server.redirect_http`: every request is answered `308` to the
same host and target over https (the method and body are kept by the client, RFC 9110 15.4.9),
as nginx's `return 308 https://$host$request_uri` does; nothing is forwarded.

A request whose head is not a plain origin-form request with a sane Host gets `400`; a head
larger than 8 KiB or slower than the header timeout closes the connection.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,253})(:[0-9]{1,5})?")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_MAX_HEAD = 8192
_BAD = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
        b"Connection: close\r\n\r\nbad request\n")


def redirect_answer(head: bytes, https_port: int) -> bytes:
    """The whole answer to one request head (pure)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return _BAD
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not _TARGET.fullmatch(parts[1]):
        return _BAD
    hosts = [line.split(":", 1)[1].strip() for line in lines[1:]
             if line.lower().startswith("host:")]
    found = _HOST.fullmatch(hosts[0]) if len(hosts) == 1 else None
    if found is None:
        return _BAD
    port = "" if https_port == 443 else f":{https_port}"
    location = f"https://{found.group(1).lower()}{port}{parts[1]}"
    return (f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()


class RedirectToHttps(asyncio.Protocol):
    def __init__(self, https_port: int, header_timeout: float) -> None:
        self._https_port = https_port
        self._timeout = header_timeout
        self._buffer = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._transport.close()
            return
        self._transport.write(redirect_answer(bytes(self._buffer[:end]), self._https_port))
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
