"""WebSocket relay: the upstream handshake first, then bytes both ways, frame headers checked.

The upstream connection is opened, and its `101` read (httptools' response parser), before the
client's upgrade is accepted, so an upstream that is down or refuses the upgrade gets the client
a 502, not a socket that closes at once. The client's key goes upstream and the upstream's
`Sec-WebSocket-Accept` must answer it; no extension is offered (Sec-WebSocket-Extensions is not
forwarded), so frames carry no compressed payloads and no RSV bits.

Then the relay copies bytes, never messages: pings, pongs and close frames pass as the ends
sent them, so each end sees what the other sent. Frame headers are checked on the way
(http/ws_frames.py): a client frame that is unmasked or breaks the framing rules closes the
WebSocket with 1002, a message from either end longer than
`server.limits.max_websocket_message` (announced by its headers, before its payload is read)
with 1009; the close frame goes to both ends. Whatever the size of a message, the gateway holds
no more of it than one read. A slow end pauses reading from the other (flow control both ways).

WebSockets hold connections of their own, bounded in number and per client (capacity.py). On
shutdown every open one gets a 1001 close frame, both ways.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os

import httptools
from multidict import CIMultiDict

from gateway.http.protocol import Exchange
from gateway.http.response import encode_head
from gateway.http.ws_frames import FrameScanner, close_frame
from gateway.proxy.errors import UpstreamFailure
from gateway.proxy.forwarder import UpstreamError
from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.websocket")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
              "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept")
GOING_AWAY = 1001
_MAX_HEAD = 64 * 1024  # the most of an upstream's handshake answer read before it is refused
_CLOSE_GRACE = 5.0  # seconds the ends get to answer a close the gateway sent, then cut


class HandshakeRefused(Exception):
    """The client's handshake could not be accepted (admission checks it first)."""


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip().encode() + _GUID).digest()).decode()


class WebSocketRegistry:
    """Open relays, so shutdown can say 1001 to each."""

    def __init__(self) -> None:
        self._open: set[Relay] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, relay: Relay) -> None:
        self._open.add(relay)

    def discard(self, relay: Relay) -> None:
        self._open.discard(relay)

    async def close_all(self, code: int = GOING_AWAY, message: bytes = b"") -> None:
        relays = list(self._open)
        for relay in relays:
            relay.close(code, message)
        await asyncio.gather(*(relay.wait() for relay in relays), return_exceptions=True)


class _UpstreamSide(asyncio.Protocol):
    """The upstream connection: its handshake answer, then frames for the client."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self.answer: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._fields: CIMultiDict[str] = CIMultiDict()
        self._head_bytes = 0
        self._head_done = False
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.from_upstream(data)
            return
        if self.answer.done():
            return
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.answer.set_result((self._parser.get_status_code(), self._fields,
                                    data[exc.args[0]:]))
            return
        except httptools.HttpParserError:
            self.answer.set_exception(ValueError("invalid handshake answer"))
            return
        if self._head_done:
            self.answer.set_result((self._parser.get_status_code(), self._fields, b""))
        elif self._head_bytes > _MAX_HEAD:
            self.answer.set_exception(ValueError("handshake answer too long"))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the upstream closed the connection"))
        if not self.lost.done():
            self.lost.set_result(None)
        if self.relay is not None:
            self.relay.upstream_lost()

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_reading(False)

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_reading(True)


class Relay:
    """Both ends of one WebSocket after the handshake: bytes copied, frame headers checked.
    It is the client connection's tunnel sink (http/protocol.py).

    A close frame the gateway sends itself goes between frames, never inside one: when the
    stream toward an end is in the middle of a frame, it waits for that frame's end."""

    def __init__(self, upstream: _UpstreamSide, max_message: int) -> None:
        self.upstream = upstream
        self.client: asyncio.Transport | None = None
        self._from_client = FrameScanner(client=True, max_message=max_message)
        self._from_upstream = FrameScanner(client=False, max_message=max_message)
        self._client_gone = asyncio.get_running_loop().create_future()
        self._cut = False  # a frame was refused: nothing more is relayed
        self._close_sent = False
        self._for_client: bytes | None = None  # a close frame waiting for a frame boundary
        self._for_upstream: bytes | None = None

    # the client connection's events (TunnelSink)
    def data(self, data: bytes) -> None:
        if self._cut:
            return
        at_boundary = self._from_client.at_boundary
        code = self._from_client.feed(data)
        if code is not None:
            log.info("closing WebSocket: client frame refused (%d)", code)
            self._refused(code, upstream_clean=at_boundary)
            return
        up = self.upstream.transport
        if up is not None:
            up.write(data)
            if self._for_upstream is not None and self._from_client.at_boundary:
                up.write(self._for_upstream)
                self._for_upstream = None

    def lost(self, exc: BaseException | None) -> None:
        if not self._client_gone.done():
            self._client_gone.set_result(None)
        up = self.upstream.transport
        if up is not None:
            up.close()

    def pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # the upstream connection's events
    def from_upstream(self, data: bytes) -> None:
        if self._cut or self.client is None:
            return
        at_boundary = self._from_upstream.at_boundary
        code = self._from_upstream.feed(data)
        if code is not None:
            log.info("closing WebSocket: upstream frame refused (%d)", code)
            self._refused(code, client_clean=at_boundary)
            return
        self.client.write(data)
        if self._for_client is not None and self._from_upstream.at_boundary:
            self.client.write(self._for_client)
            self._for_client = None

    def upstream_lost(self) -> None:
        if self.client is not None:
            self.client.close()

    def client_reading(self, on: bool) -> None:
        client = self.client
        if client is None or client.is_closing():
            return
        if on:
            client.resume_reading()
        else:
            client.pause_reading()

    def _refused(self, code: int, client_clean: bool | None = None,
                 upstream_clean: bool | None = None) -> None:
        """A frame broke a rule: each end gets a close frame with `code` where its stream is
        between frames (the chunk holding the bad frame is dropped), then both connections
        end."""
        self._cut = self._close_sent = True
        client, up = self.client, self.upstream.transport
        if client_clean is None:
            client_clean = self._from_upstream.at_boundary
        if upstream_clean is None:
            upstream_clean = self._from_client.at_boundary
        if client is not None and client_clean:
            client.write(close_frame(code))
        if up is not None and upstream_clean:
            up.write(close_frame(code, mask=os.urandom(4)))
        for transport in (client, up):
            if transport is not None:
                transport.close()

    def close(self, code: int, reason: bytes = b"") -> None:
        """Send a close frame with `code` both ways (shutdown); the ends finish the closing
        handshake, and after _CLOSE_GRACE the connections end anyway."""
        if self._close_sent:
            return
        self._close_sent = True
        client, up = self.client, self.upstream.transport
        if client is not None and not client.is_closing():
            frame = close_frame(code, reason)
            if self._from_upstream.at_boundary:
                client.write(frame)
            else:
                self._for_client = frame
        if up is not None and not up.is_closing():
            frame = close_frame(code, reason, mask=os.urandom(4))
            if self._from_client.at_boundary:
                up.write(frame)
            else:
                self._for_upstream = frame
        loop = asyncio.get_running_loop()
        for transport in (client, up):
            if transport is not None:
                loop.call_later(_CLOSE_GRACE, transport.close)

    async def wait(self) -> None:
        """Until both ends are closed."""
        await self._client_gone
        await self.upstream.lost


async def relay_websocket(
    exchange: Exchange,
    pool: UpstreamPool,
    registry: WebSocketRegistry,
    *,
    path_qs: str,
    headers: CIMultiDict[str],
    response_headers: CIMultiDict[str],
    preserve_host: bool,
    client_ip: str = "",
    max_message: int = 1024 * 1024,
) -> int:
    """Relay one WebSocket (its status, 101, is returned once it ends); raise Full
    (capacity), UpstreamError or HandshakeRefused before the client's `101`."""
    pool.websockets.take_now(client_ip)
    try:
        return await _relay(exchange, pool, registry, path_qs, headers, response_headers,
                            preserve_host, max_message)
    finally:
        pool.websockets.give_back_for(client_ip)


def _upstream_failure(detail: str, kind: str = "protocol", status: int = 502
                      ) -> UpstreamFailure:
    return UpstreamFailure(status, kind, detail)


async def _open(pool: UpstreamPool, path_qs: str, headers: CIMultiDict[str], key: str,
                protocols: list[str], preserve_host: bool
                ) -> tuple[_UpstreamSide, CIMultiDict[str], bytes, str]:
    """Connect to the next target and make the handshake; its answer's headers, the bytes
    after it, and the target's base URL."""
    chosen = pool.pools_from_next()[0]  # balanced and health-checked like any request
    target = chosen.target
    settings = pool.settings
    loop = asyncio.get_running_loop()
    context = chosen.ssl_context  # upstream.tls: its CAs and client certificate
    try:
        async with asyncio.timeout(settings.connect_timeout):
            _, side = await loop.create_connection(
                lambda: _UpstreamSide(loop), target.host, target.port, ssl=context)
    except TimeoutError as exc:
        raise UpstreamError(_upstream_failure("timed out connecting to the upstream",
                                              "timeout", 504), target.base_url) from exc
    except OSError as exc:
        raise UpstreamError(_upstream_failure("could not connect to the upstream", "connect"),
                            target.base_url) from exc
    for name in _HANDSHAKE:
        headers.popall(name, None)
    if not preserve_host:
        headers["Host"] = target.authority
    fields = [*headers.items(), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
              ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    if protocols:
        fields.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    assert side.transport is not None
    side.transport.write(f"GET {path_qs} HTTP/1.1\r\n{lines}\r\n".encode("utf-8",
                                                                      "surrogateescape"))
    try:
        async with asyncio.timeout(settings.read_timeout):
            status, answer, tail = await side.answer
    except TimeoutError as exc:
        side.transport.close()
        raise UpstreamError(_upstream_failure("the upstream did not answer in time",
                                              "timeout", 504), target.base_url) from exc
    except (ValueError, ConnectionError) as exc:
        side.transport.close()
        raise UpstreamError(_upstream_failure("the upstream sent an invalid response"),
                            target.base_url) from exc
    if status != 101 or answer.get("Upgrade", "").lower() != "websocket" \
            or answer.get("Sec-WebSocket-Accept") != accept_value(key):
        side.transport.close()
        raise UpstreamError(_upstream_failure(
            f"the upstream refused the WebSocket upgrade ({status})"), target.base_url)
    return side, answer, tail, target.base_url


async def _relay(
    exchange: Exchange,
    pool: UpstreamPool,
    registry: WebSocketRegistry,
    path_qs: str,
    headers: CIMultiDict[str],
    response_headers: CIMultiDict[str],
    preserve_host: bool,
    max_message: int,
) -> int:
    keys = exchange.headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1:
        raise HandshakeRefused("a WebSocket handshake needs exactly one Sec-WebSocket-Key")
    key = keys[0].strip()
    protocols = [p.strip() for v in exchange.headers.getall("Sec-WebSocket-Protocol", ())
                 for p in v.split(",") if p.strip()]
    side, answer, tail, _ = await _open(pool, path_qs, headers, key, protocols, preserve_host)
    chosen = answer.get("Sec-WebSocket-Protocol")
    out = CIMultiDict([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                       ("Sec-WebSocket-Accept", accept_value(key))])
    if chosen is not None and chosen in protocols:  # never one the client did not offer
        out["Sec-WebSocket-Protocol"] = chosen
    out.extend(response_headers)
    relay = Relay(side, max_message)
    side.relay = relay
    try:
        relay.client = exchange.switch_protocols(encode_head(101, None, out.items()), relay)
    except BaseException:
        if side.transport is not None:
            side.transport.close()
        raise
    registry.add(relay)
    try:
        if tail:
            relay.from_upstream(tail)
        await relay.wait()
    finally:
        registry.discard(relay)
        if side.transport is not None:
            side.transport.close()
        if not relay.client.is_closing():
            relay.client.close()
    return 101
