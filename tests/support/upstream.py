"""A test upstream that reports exactly what it received, plus a raw port that misbehaves.

HTTP port (aiohttp):
  /download/<n>        n bytes of a repeating pattern, Content-Length framed, streamed
  /chunked/<n>         n bytes, chunked (no Content-Length)
  /status/<code>       an empty response with that status (204, 304, ...)
  /gzip                a gzip body with Content-Encoding: gzip
  /slow/<seconds>      answers after a delay
  /hop                 a response carrying hop-by-hop headers that must not reach the client
  /cors-leak           sends its own Access-Control-* headers, Vary and X-Powered-By
  /ws                  WebSocket echo: "close:<code>" closes with that code; pings auto-ponged
  anything else        JSON: method, raw_path, version, headers (in order), body sha256/length
Raw port (asyncio): the request path picks the failure:
  /reset               closes the connection before any response byte
  /truncate            Content-Length: 1000, sends 10 bytes, closes
  /truncate-chunked    chunked, sends one chunk, closes without the last chunk
  /garbage             answers with bytes that are not HTTP
  /bare                a minimal valid response: no Server, Content-Type or Date
  /bad-header          a header line without a colon
  /interim             100 Continue, then the 200
  /until-close         neither Content-Length nor chunked: the body ends when it closes
  /as-sent             status 299 "Quite Custom", Set-Cookie and X-Twice twice each
  /stale               the first request on a connection: 200 "connection N" (the Nth one
                       accepted), kept open; a later one on that connection: closed unanswered
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import ssl

from aiohttp import WSMsgType, web

GZIP_PLAIN = b"hello gzip world\n" * 64
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)
PATTERN = bytes(range(256)) * 256  # 64 KiB
UNTIL_CLOSE_PIECES = [b"no length, ", b"no chunks: ", b"read until the upstream closes\n" * 200]


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({
        "method": request.method,
        "raw_path": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_sha256": digest.hexdigest(),
        "body_length": length,
    })


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["n"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.path.startswith("/download/"):
        resp.content_length = size
    await resp.prepare(request)
    sent = 0 if request.method != "HEAD" else size  # aiohttp would send a HEAD body if written
    while sent < size:
        piece = PATTERN[: min(len(PATTERN), size - sent)]
        await resp.write(piece)
        sent += len(piece)
    await resp.write_eof()
    return resp


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, headers={"ETag": '"v1"'})


async def gz(request: web.Request) -> web.Response:
    return web.Response(body=GZIP_BODY, headers={"Content-Encoding": "gzip",
                                                 "Content-Type": "text/plain"})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.Response(text="slow done")


async def hop(request: web.Request) -> web.Response:
    return web.Response(text="hop", headers={
        "Connection": "X-Upstream-Secret", "X-Upstream-Secret": "s3cret",
        "Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic", "X-Kept": "yes",
        "Trailer": "X-Trail", "Upgrade": "h2c",
    })


async def cors_leak(request: web.Request) -> web.Response:
    return web.Response(text="cors", headers={
        "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
        "Vary": "Accept-Encoding", "X-Powered-By": "Express"})


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse(protocols=("chat.v1",))
    await sock.prepare(request)
    async for msg in sock:
        if msg.type is WSMsgType.TEXT:
            if msg.data.startswith("close:"):
                await sock.close(code=int(msg.data[6:]), message=b"bye")
                break
            await sock.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


class RawUpstream(asyncio.Protocol):
    connections = 0  # accepted so far, numbered from 1 (reported by /stale)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        RawUpstream.connections += 1
        self.number = RawUpstream.connections
        self.transport = transport
        self.buffer = b""
        self.answered = 0  # requests answered on this connection

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        path = self.buffer.split(b" ", 2)[1]
        self.buffer = b""  # one request per head; bodies are not read
        t = self.transport
        if path == b"/stale":
            if self.answered:  # an idle keep-alive connection, closed as the request came
                t.close()
                return
            body = b"connection %d" % self.number
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.answered += 1
            return
        if path == b"/truncate":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        elif path == b"/truncate-chunked":
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + b"y" * 10
                    + b"\r\n")
        elif path == b"/bare":  # no Server, no Content-Type, no Date
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif path == b"/garbage":
            t.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif path == b"/bad-header":
            t.write(b"HTTP/1.1 200 OK\r\nNo Colon Here\r\nContent-Length: 2\r\n\r\nok")
        elif path == b"/interim":
            t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            t.write(b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 5\r\n\r\nfinal")
        elif path == b"/until-close":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            for piece in UNTIL_CLOSE_PIECES:
                t.write(piece)
        elif path == b"/as-sent":
            t.write(b"HTTP/1.1 299 Quite Custom\r\nSet-Cookie: a=1\r\nX-Twice: first\r\n"
                    b"Set-Cookie: b=2; Path=/\r\nX-Twice: second\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\nok")
        t.close()


def app() -> web.Application:
    application = web.Application(client_max_size=1024**3)
    application.router.add_get("/download/{n:\\d+}", download)
    application.router.add_get("/chunked/{n:\\d+}", download)
    application.router.add_route("*", "/status/{code:\\d+}", status)
    application.router.add_get("/gzip", gz)
    application.router.add_get("/slow/{seconds}", slow)
    application.router.add_get("/hop", hop)
    application.router.add_get("/ws", ws)
    application.router.add_route("*", "/cors-leak", cors_leak)
    application.router.add_route("*", "/{tail:.*}", echo)
    return application


async def main(port: int, raw_port: int, tls: ssl.SSLContext | None = None) -> None:
    runner = web.AppRunner(app(), access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    loop = asyncio.get_running_loop()
    await loop.create_server(RawUpstream, "127.0.0.1", raw_port)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--raw-port", type=int, required=True)
    parser.add_argument("--tls-cert", help="serve --port over TLS with this certificate (PEM)")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca", help="and require a client certificate from this CA")
    args = parser.parse_args()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    asyncio.run(main(args.port, args.raw_port, context))
