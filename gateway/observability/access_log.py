"""The access log: one line per request, JSON by default, to stdout.

Fields: time, request_id, client_ip, method, path (normalized), route, status, source
(gateway | upstream), bytes_in, bytes_out, duration_ms, upstream_ms, limited_by. Requests of
routes listed in `observability.access_log.exclude_routes` (default: `health`) are not logged.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class RequestRecord:
    """What the handler learns about a request, for the access log and the metrics."""

    method: str
    route: str = "unmatched"
    source: str = "gateway"
    path: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    limited_by: tuple[str, ...] = ()
    upstream_seconds: float | None = None
    body_bytes_out: int = 0  # body bytes relayed from the upstream


FLUSH_S = 0.2  # a line is out at most this late (Envoy's access log: 1 s)
FLUSH_BYTES = 64 * 1024  # or as soon as this much is waiting


class _Lines:
    """Access lines buffered and written to stdout in one write per FLUSH_S (or FLUSH_BYTES),
    not one `logging` call, write and flush per request: a cost on every request, and a burst
    of answers at once (2,000 slow clients cut together) paid it 2,000 times in one loop turn.
    What is buffered is written at shutdown (server.py) and at exit; a killed process loses
    at most FLUSH_S of lines."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a command, a test): at once
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:  # (a loop that ended: flush)
            self._timer = loop.call_later(FLUSH_S, self.flush)
            self._timer_loop = loop

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            for chunk in _whole_lines(lines):
                while chunk:  # (a line over PIPE_BUF may go out in parts)
                    chunk = chunk[os.write(STDOUT, chunk):]
        except OSError:  # stdout gone (a closed pipe): the lines cannot be kept
            pass


STDOUT = 1
PIPE_BUF = 4096  # a write up to this size to a pipe is never interleaved with another's


def encode_line(line: str) -> bytes:
    """UTF-8, raw bytes kept as they came (surrogateescape); any other lone surrogate as a
    backslash escape: a line that cannot be encoded is written, never lost with its batch."""
    try:
        return line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return line.encode("utf-8", "backslashreplace")


def _whole_lines(lines: list[str]) -> Iterator[bytes]:
    """The lines in writes of whole lines, each at most PIPE_BUF bytes where a line fits: the
    workers of `--workers N` share one stdout, and a larger write to a pipe may be split by
    another worker's line (Python's own stdout buffer splits anywhere)."""
    chunk = b""
    for line in lines:
        data = encode_line(line)
        if chunk and len(chunk) + len(data) > PIPE_BUF:
            yield chunk
            chunk = b""
        chunk += data
    if chunk:
        yield chunk


_out = _Lines()
atexit.register(_out.flush)
flush = _out.flush


def configure(fmt: str) -> None:
    """The line format (json | text); takes effect for the next line."""
    configure.format = fmt  # type: ignore[attr-defined]


configure.format = "json"  # type: ignore[attr-defined]


def write(record: RequestRecord, status: int, bytes_in: int, bytes_out: int,
          seconds: float) -> None:
    fields = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "request_id": record.request_id, "client_ip": record.client_ip,
        "method": record.method, "path": record.path, "route": record.route,
        "status": status, "source": record.source, "bytes_in": bytes_in,
        "bytes_out": bytes_out, "duration_ms": round(seconds * 1000, 2),
        "upstream_ms": None if record.upstream_seconds is None
        else round(record.upstream_seconds * 1000, 2),
        "limited_by": list(record.limited_by) or None,
    }
    if configure.format == "json":  # type: ignore[attr-defined]
        _out.add(json.dumps(fields, separators=(",", ":")) + "\n")
    else:
        _out.add(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None) + "\n")
