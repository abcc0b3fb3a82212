"""Small HTTP helpers for tests: http.client calls, and a raw HTTP/1.1 client (the bytes sent are
exactly the bytes written: no library normalizes paths, merges headers or fixes framing) whose
waits are all bounded."""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    def header_names(self) -> set[str]:
        return {k.lower() for k in self.headers}


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def upstream_saw(reply: Reply) -> dict[str, list[str]]:
    """Headers the echo upstream received, lower-case name -> values in order."""
    seen: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes or `timeout` passes without data."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


# --------------------------------------------------------------------------------------------
# raw HTTP/1.1 client

RAW_TIMEOUT = 3.0  # longest wait for any single socket operation


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # every byte read for this response, head and body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self):
        return json.loads(self.body)

    def is_problem(self, status: int) -> bool:
        content_type = (self.header("Content-Type") or "").split(";")[0].strip()
        return (self.status == status and content_type == "application/problem+json"
                and self.json()["status"] == status)


class Conn:
    """One TCP connection to the gateway with a read buffer; all waits are bounded."""

    def __init__(self, port: int, timeout: float = RAW_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed by the gateway; read so far: {self.buf!r}")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self) -> Response:
        """Read one response: status line, headers, and a Content-Length or chunked body."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head = self._take(self.buf.index(b"\r\n\r\n") + 4)
        lines = head[:-4].decode("latin-1").split("\r\n")
        _version, status, reason = [*lines[0].split(" ", 2), ""][:3]
        headers = [(k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:])]
        resp = Response(int(status), reason, headers, b"", head)
        if 100 <= resp.status < 200 or resp.status in (204, 304):
            return resp
        if resp.header("Content-Length") is not None:
            length = int(resp.header("Content-Length") or 0)
            while len(self.buf) < length:
                self._fill()
            resp.body = self._take(length)
        elif (resp.header("Transfer-Encoding") or "").lower() == "chunked":
            resp.body = self._read_chunked()
        else:  # delimited by the end of the connection
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
            resp.body = self._take(len(self.buf))
        resp.raw = head + resp.body
        return resp

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size = int(self._take(self.buf.index(b"\r\n") + 2).split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._fill()
            body += self._take(size + 2)[:-2]
            if size == 0:
                return body

    def closed_within(self, seconds: float) -> bool:
        """True when the gateway ends the connection, sending nothing more, within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536) == b"" and not self.buf
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def seconds_until_closed(self, limit: float) -> float | None:
        """Seconds until the gateway closes the connection; None if it is still open at `limit`
        or if it sends anything meanwhile."""
        start = time.monotonic()
        return time.monotonic() - start if self.closed_within(limit) else None


def exchange(port: int, data: bytes, timeout: float = RAW_TIMEOUT) -> Response:
    """One request written as raw bytes on a new connection; its response."""
    with Conn(port, timeout) as conn:
        conn.send(data)
        return conn.read_response()
