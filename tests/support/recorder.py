"""A recording upstream: logs exactly what reached it, one JSON line per request.

Run as a process (`python -m tests.support.recorder --port P --log FILE`); it prints
`{"ready": true}` when listening. Built on asyncio streams and h11 (server role), which is an
independent HTTP/1.1 parser: what it logs is what a strict upstream would have understood.

Every request appends one line to FILE (flushed at once):
  {"conn": n, "seq": k, "method", "target", "http_version", "headers": [[name, value], ...],
   "body_length", "body_head" (first 200 bytes, latin-1), "trailers": [[name, value], ...],
   "t_head", "t_end" (wall-clock times the head and the end of the message arrived)}
With `--wire`, each entry also has "wire": the bytes of that request exactly as received
(latin-1), from the end of the previous request on the connection to the end of this one.
A framing error is logged as {"conn": n, "error": "...", "raw": first 500 bytes (latin-1)},
a connection closed in the middle of a request as {"conn", "error": "incomplete", ...}.

Answers: 200 with a small JSON body and Content-Length, keep-alive. Special targets:
  /__answer/600     raw `HTTP/1.1 600 Weird` with an empty body
  /__answer/101     raw `101 Switching Protocols` (Upgrade: foo) then echoes every byte
  /__answer/103     a 103 Early Hints, then a 200
  /__answer/raw/<name>  a canned malformed response (CANNED below)
  /__slow/<s>       answers after <s> seconds
  /__sync/<token>   an ordinary answer; used by Recorder.sync as an end-of-test marker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h11

from tests.support.processes import Gateway, free_port, start_gateway, start_ready, stop

SYNC_PREFIX = "/__sync/"


# /__answer/raw/<name>: malformed or ambiguous responses, written as is; then the connection
# is closed, except for names ending in "-keep"
CANNED = {
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"2\r\nok\r\n0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n Set-Cookie: folded=1\r\n"
                b"Content-Length: 2\r\n\r\nok",
    "space-in-name": b"HTTP/1.1 200 OK\r\nSet Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "bare-cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: cr=1\r\nContent-Length: 2\r\n"
                        b"\r\nok",
    "204-with-body-keep": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nSet-Cookie: smuggled=1\r\nContent-Length: 0\r\n\r\n",
    "304-with-body-keep": b"HTTP/1.1 304 Not Modified\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nSet-Cookie: smuggled=1\r\nContent-Length: 0\r\n\r\n",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                       b"2\r\nok\r\n0\r\n\r\n",
    "cl-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
    "status-2-digits": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "http-1.0-no-length": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close",
}


def _text(data: bytes) -> str:
    return data.decode("latin-1")


class RecorderServer:
    def __init__(self, log_path: Path, wire: bool = False) -> None:
        self.log = log_path.open("a", encoding="utf-8")
        self.wire = wire
        self.conn_numbers = itertools.count(1)

    def write(self, entry: dict) -> None:
        self.log.write(json.dumps(entry) + "\n")
        self.log.flush()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = next(self.conn_numbers)
        try:
            await self._serve(conn_no, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, conn_no: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * 1024)
        raw = b""  # bytes of the current request so far (first 500 kept)
        seq = 0
        current: dict | None = None
        body = bytearray()
        body_length = 0
        pending = bytearray()  # bytes received and not yet logged as a request's "wire"
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.write({"conn": conn_no, "error": str(exc) or type(exc).__name__,
                            "raw": _text(raw[:500]), "t": time.time()})
                with contextlib.suppress(Exception):
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    await writer.drain()
                return
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if len(raw) < 500:
                    raw += data[:500 - len(raw)]
                if not data and current is not None:
                    entry = {**current, "error": "incomplete", "body_length": body_length,
                             "raw": _text(raw[:500])}
                    self.write(entry)
                    return
                if self.wire:
                    pending += data
                conn.receive_data(data)
                continue
            if event is h11.PAUSED:
                # the previous request asked to switch protocols and was answered otherwise
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                seq += 1
                body = bytearray()
                body_length = 0
                current = {
                    "conn": conn_no, "seq": seq, "method": _text(event.method),
                    "target": _text(event.target),
                    "http_version": _text(event.http_version),
                    "headers": [[_text(k), _text(v)] for k, v in event.headers.raw_items()],
                    "t_head": time.time(),
                }
                continue
            if isinstance(event, h11.Data):
                body_length += len(event.data)
                if len(body) < 200:
                    body += event.data[:200 - len(body)]
                continue
            if isinstance(event, h11.EndOfMessage):
                assert current is not None
                entry = {**current, "body_length": body_length,
                         "body_head": _text(bytes(body)),
                         "trailers": [[_text(k), _text(v)] for k, v in event.headers.raw_items()],
                         "t_end": time.time()}
                if self.wire:
                    used = len(pending) - len(conn.trailing_data[0])
                    entry["wire"] = _text(bytes(pending[:used]))
                    del pending[:used]
                self.write(entry)
                current = None
                raw = b""
                outcome = await self._answer(conn, entry, reader, writer)
                if outcome == "end":
                    return
                if outcome == "raw":  # a complete raw answer: the connection goes on
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * 1024)
                    pending.clear()
                    continue
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                continue

    async def _answer(self, conn: h11.Connection, entry: dict, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> str:
        """Send the answer: "ok", "raw" (written by hand, keep-alive) or "end" (closed)."""
        target = entry["target"]
        path = target.split("?", 1)[0]
        if path == "/__answer/600":
            writer.write(b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return "raw"
        if path == "/__answer/101":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            await writer.drain()
            with contextlib.suppress(Exception):
                while data := await asyncio.wait_for(reader.read(65536), 10.0):
                    writer.write(data)
                    await writer.drain()
            return "end"
        if path.startswith("/__answer/raw/") and path[14:] in CANNED:
            writer.write(CANNED[path[14:]])
            await writer.drain()
            # the "-keep" answers leave extra bytes on a connection that stays open (response
            # queue poisoning if the gateway reuses it); the others end the connection
            return "raw" if path.endswith("-keep") else "end"
        if path == "/__answer/103":
            writer.write(conn.send(h11.InformationalResponse(
                status_code=103, headers=[("Link", "</style.css>; rel=preload; as=style")])))
        if path.startswith("/__slow/"):
            with contextlib.suppress(ValueError):
                await asyncio.sleep(float(path[len("/__slow/"):]))
        payload = json.dumps({"ok": True, "conn": entry["conn"], "seq": entry["seq"],
                              "target": target}).encode()
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])))
        if entry["method"] != "HEAD":
            writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return "ok"


async def main(port: int, log_path: Path, wire: bool = False) -> None:
    server = RecorderServer(log_path, wire)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port)
    print(json.dumps({"ready": True}), flush=True)
    async with srv:
        await srv.serve_forever()


# --------------------------------------------------------------------------------------------
# the test side


@dataclass
class Recorder:
    port: int
    log: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """The current end of the log; pass it to since()."""
        return self.log.stat().st_size if self.log.exists() else 0

    def since(self, mark: int, include_sync: bool = False) -> list[dict]:
        """Entries logged after `mark`, in order (sync markers left out unless asked for)."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(mark)
            data = f.read()
        entries = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if not include_sync and str(entry.get("target", "")).startswith(SYNC_PREFIX):
                continue
            entries.append(entry)
        return entries

    def sync(self, gateway_port: int, timeout: float = 5.0, host: str = "sync.test") -> None:
        """Send a unique marker request through the gateway on a fresh connection and wait
        until the recorder logged it: whatever reached the upstream before it is in the log."""
        token = uuid.uuid4().hex
        target = SYNC_PREFIX + token
        start = self.mark()
        with socket.create_connection(("127.0.0.1", gateway_port), timeout=timeout) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("target") == target for e in self.since(start, include_sync=True)):
                return
            time.sleep(0.01)
        raise TimeoutError(f"sync marker {target} did not reach the recorder via the gateway")


def start_recorder(tmp: Path, wire: bool = False, port: int | None = None) -> Recorder:
    """A recorder process on a free port (or on `port`: one restarted where it was), logging
    into `tmp` (with `wire`: each request's bytes as received too)."""
    port = port or free_port()
    log = tmp / f"recorder-{port}.jsonl"
    log.touch()
    return Recorder(port, log, start_ready("tests.support.recorder", "--port", str(port),
                                           "--log", str(log), *(["--wire"] if wire else [])))


class Site(NamedTuple):
    """A gateway in front of a recorder."""

    gw: Gateway
    rec: Recorder


@contextlib.contextmanager
def gateway_before_recorder(tmp: Path, wire: bool = False, **gateway: object) -> Iterator[Site]:
    """A recorder (`wire`: logging each request's bytes too), and a gateway in front of it
    (start_gateway's keyword arguments), stopped when done: for tests that check what exactly
    reached the upstream."""
    rec = start_recorder(tmp, wire=wire)
    try:
        gw = start_gateway(tmp, rec.url, **gateway)  # type: ignore[arg-type]
        try:
            yield Site(gw, rec)
        finally:
            stop(gw.proc)
    finally:
        stop(rec.proc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--wire", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.log, args.wire))
