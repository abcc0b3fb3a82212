"""An upstream that fails on request, for the reliability suite's fault tests.

Run as a process (`python -m tests.support.chaos_upstream --port P`); it prints
`{"ready": true}` when listening. Raw asyncio, HTTP/1.1 keep-alive, request bodies framed by
Content-Length only. The path picks the behaviour:
  /ok               200, a small JSON body naming the path
  /slow/<s>         the same after <s> seconds
  /reset-before     the connection is reset (RST) before any byte of an answer
  /reset-mid        a 200 head announcing 1000 bytes, 10 of them, then a reset
  /flaky            200, then the connection is closed (no `Connection: close` said) after a
                    random 0 to 20 ms, half of the time: a keep-alive connection the gateway
                    may reuse just as it goes away
Counts (`GET /__stats` on a fresh connection, answered as JSON): connections accepted and
currently open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct

from tests.support.processes import free_port, start_ready


class Chaos(asyncio.Protocol):
    accepted = 0
    open = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.busy = False
        Chaos.accepted += 1
        Chaos.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        Chaos.open -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length:]
        method, path = head.split(" ", 2)[:2]
        self.busy = True
        asyncio.get_running_loop().create_task(self._answer(method, path))

    def _reset(self) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # SO_LINGER 0: close() sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _ok(self, method: str, path: str, extra: bytes = b"") -> None:
        body = json.dumps({"ok": True, "path": path}).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n" % (len(body), extra))
        if method != "HEAD":
            self.transport.write(body)

    async def _answer(self, method: str, path: str) -> None:
        if path.startswith("/slow/"):
            await asyncio.sleep(float(path[6:]))
        if self.transport.is_closing():
            return
        if path == "/reset-before":
            self._reset()
            return
        if path == "/reset-mid":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(0.01)
            self._reset()
            return
        if path == "/__stats":
            body = json.dumps({"accepted": Chaos.accepted, "open": Chaos.open - 1}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()
            return
        self._ok(method, path)
        if path == "/flaky" and random.random() < 0.5:
            await asyncio.sleep(random.random() * 0.02)
            self.transport.close()
            return
        self.busy = False
        self._next()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Chaos, "127.0.0.1", port, backlog=1024)
    print(json.dumps({"ready": True}), flush=True)
    async with server:
        await server.serve_forever()


def start_chaos(port: int | None = None):
    """A chaos upstream on `port` (a free one if None): (port, process)."""
    port = port or free_port()
    return port, start_ready("tests.support.chaos_upstream", "--port", str(port))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
