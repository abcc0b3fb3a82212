"""WebSocket relay: the upstream handshake first, then frames both ways as they come.

The upstream connection is opened before the client's upgrade is accepted, so an upstream that
is down or refuses the upgrade gets the client a 502, not a socket that closes at once. Pings,
pongs and close codes are relayed rather than answered here (autoping and autoclose are off on
both sides), so each end sees what the other sent.

WebSockets hold connections of their own, bounded in number and per client (capacity.py).
A frame or message larger than `server.limits.max_websocket_message`, from either end, closes
the WebSocket with 1009: a frame is refused by the length its header announces, before any of
its payload is buffered. Messages are relayed whole (aiohttp reads WebSockets message by
message), so that bound is also the most a WebSocket can make the gateway hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.http.response import GatewayWebSocketResponse
from gateway.proxy.errors import UpstreamFailure, classify
from gateway.proxy.forwarder import UpstreamError
from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.websocket")
_HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
              "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept")
GOING_AWAY = aiohttp.WSCloseCode.GOING_AWAY


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire (1005/1006/1015 are reserved for local use)."""
    if code is None or code in (1004, 1005, 1006, 1015) or not 1000 <= code <= 4999:
        return 1000
    return code


class HandshakeRefused(Exception):
    """The client's handshake could not be accepted (admission checks it first)."""


class WebSocketRegistry:
    """Open client-side sockets, so shutdown can say 1001 to each."""

    def __init__(self) -> None:
        self._open: set[web.WebSocketResponse] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, ws: web.WebSocketResponse) -> None:
        self._open.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        self._open.discard(ws)

    async def close_all(self, code: int = GOING_AWAY, message: bytes = b"") -> None:
        await asyncio.gather(*(ws.close(code=code, message=message) for ws in list(self._open)),
                             return_exceptions=True)


async def relay_websocket(
    request: web.BaseRequest,
    pool: UpstreamPool,
    registry: WebSocketRegistry,
    *,
    path_qs: str,
    headers: CIMultiDict[str],
    response_headers: CIMultiDict[str],
    preserve_host: bool,
    client_ip: str = "",
    max_message: int = 1024 * 1024,
) -> web.StreamResponse:
    """Relay one WebSocket; raise Full (capacity), UpstreamError or HandshakeRefused before
    the client's `101`."""
    pool.websockets.take_now(client_ip)
    try:
        return await _relay(request, pool, registry, path_qs, headers, response_headers,
                            preserve_host, max_message + 1)  # aiohttp refuses size >= max
    finally:
        pool.websockets.give_back_for(client_ip)


async def _relay(
    request: web.BaseRequest,
    pool: UpstreamPool,
    registry: WebSocketRegistry,
    path_qs: str,
    headers: CIMultiDict[str],
    response_headers: CIMultiDict[str],
    preserve_host: bool,
    max_msg_size: int,
) -> web.StreamResponse:
    target = pool.targets_from_next()[0]
    scheme = "wss" if target.scheme == "https" else "ws"
    url = URL(f"{scheme}://{target.authority}{path_qs}", encoded=True)
    protocols = [p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ())
                 for p in v.split(",") if p.strip()]
    for name in _HANDSHAKE:
        headers.popall(name, None)
    if not preserve_host:
        headers["Host"] = target.authority
    try:
        upstream = await pool.ws_session.ws_connect(
            url, headers=headers, protocols=protocols, autoping=False, autoclose=False,
            max_msg_size=max_msg_size, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        failure = UpstreamFailure(502, "protocol",
                                  f"the upstream refused the WebSocket upgrade ({exc.status})")
        raise UpstreamError(failure, target.base_url) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise UpstreamError(classify(exc), target.base_url) from exc

    client = GatewayWebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False, autoclose=False, max_msg_size=max_msg_size, compress=False,
    )
    client.headers.update(response_headers)
    try:
        await client.prepare(request)
    except web.HTTPException as exc:  # never aiohttp's own text answer
        await upstream.close()
        raise HandshakeRefused(f"malformed WebSocket handshake ({exc.reason})") from exc
    except BaseException:
        await upstream.close()
        raise
    registry.add(client)
    try:
        to_upstream = asyncio.create_task(_pump(client, upstream))
        to_client = asyncio.create_task(_pump(upstream, client))
        _, pending = await asyncio.wait({to_upstream, to_client},
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    finally:
        registry.discard(client)
        if not upstream.closed:
            await upstream.close(code=_sendable(client.close_code or GOING_AWAY))
        if not client.closed:
            await client.close(code=_sendable(upstream.close_code or GOING_AWAY))
    return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code = _sendable(msg.data)
            reason = (msg.extra or "").encode()
            await sink.close(code=code, message=reason)
            await source.close(code=code, message=reason)
            return
        else:  # CLOSING, CLOSED, ERROR: the source is gone
            return
