"""The streaming forwarder: one request to the upstream, its response back to the client.

The request goes out on a keep-alive connection of the gateway's own client
(upstream_client.py), the head encoded once per attempt; on a reused connection the upstream
had closed while idle, an idempotent request is sent once more on a fresh one, apart from the
`retries` across targets.

A request body up to `upstream.request_buffer` is received whole before an upstream
connection is taken (capacity.py says why); a larger one streams, chunk by chunk (with a
per-read timeout and a running size cap) while the upstream consumes it, under the streaming
budget. The response body is written as it arrives. An upstream's Content-Length comes back as
is, so a short upstream body leaves the client with an incomplete message rather than a clean
end.

An upstream answer that is not HTTP this gateway can relay is a 502: a status outside
200-599 (`600 Weird`), or `101 Switching Protocols` to a request that asked for no upgrade
(relayed, it would turn the connection into a tunnel no policy sees); that connection is
dropped, not pooled.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

from multidict import CIMultiDict

from gateway.http.forwarding import downstream_response_headers
from gateway.http.protocol import Body, BodyTimeout, Exchange, MalformedBody, RequestBodyFlood
from gateway.observability.access_log import RequestRecord
from gateway.observability.metrics import upstream_duration, upstream_error
from gateway.proxy.capacity import Slots
from gateway.proxy.errors import (
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    UpstreamBroken,
    UpstreamFailure,
)
from gateway.proxy.pool import UpstreamPool
from gateway.proxy.upstream_client import UpstreamResponse, encode_head

HeaderHook = Callable[[CIMultiDict[str]], None]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ClientBodyError(Exception):
    """The client's request body broke a rule; `status` is what to answer (408 or 413).
    `answered`: the connection has sent that answer already (a body timeout, http/protocol.py)
    and is ending; the handler only accounts for it."""

    def __init__(self, status: int, detail: str, answered: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.answered = answered


class UpstreamError(Exception):
    """The upstream failed before a response was started; carries the mapped failure."""

    def __init__(self, failure: UpstreamFailure, target: str) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.target = target


class RequestBody:
    """The client's body: received whole when small (`buffer`), else an async iterator;
    size-capped, and each wait for bytes bounded by `timeout`."""

    __slots__ = ("_buffered", "_content", "_head", "_limit", "_received", "_timeout", "_whole",
                 "error", "started")

    def __init__(self, content: Body, limit: int, timeout: float) -> None:
        self._content = content
        self._limit = limit
        self._timeout = timeout
        self._head: list[bytes] = []  # read by `buffer`, not yet sent
        self._received = 0
        self._buffered = False  # `buffer` has answered: `_whole` is its answer
        self._whole: bytes | None = None
        self.started = False
        self.error: ClientBodyError | None = None

    async def _read(self) -> bytes:
        try:
            # the connection keeps the deadline (one timer for the whole body, not one a read)
            chunk = await self._content.readany(self._timeout)
        except BodyTimeout as exc:
            self._fail(ClientBodyError(408, "request body not received in time",
                                       answered=exc.answered))
        except RequestBodyFlood as exc:  # chunk framing far beyond the body it carries
            self._fail(ClientBodyError(413, str(exc)))
        except MalformedBody as exc:
            self._fail(ClientBodyError(400, str(exc)))
        self._received += len(chunk)
        if self._received > self._limit:
            self._fail(ClientBodyError(413, f"request body exceeds {self._limit} bytes"))
        return chunk

    def _fail(self, error: ClientBodyError) -> NoReturn:
        """Keep `error` (`forward` raises it again when the upstream send broke off because
        of it) and raise a copy: the kept one holds no traceback, whose frames would hold
        this body and the whole request (a cycle only the garbage collector frees)."""
        self.error = error
        raise ClientBodyError(error.status, error.detail, error.answered) from None

    async def buffer(self, size: int, length: int | None) -> bytes | None:
        """The whole body when it is at most `size` bytes (read now), else None: what was
        read is kept and sent first when the body streams. Called again, the same answer,
        nothing read: the handler receives the body first (outside the count of requests in
        progress), then `forward` asks again."""
        if not self._buffered:
            self._whole = await self._receive(size, length)
            self._buffered = True
        return self._whole

    async def _receive(self, size: int, length: int | None) -> bytes | None:
        if length is not None and length > size:
            return None
        while True:
            chunk = await self._read()
            if not chunk:
                return b"".join(self._head)
            self._head.append(chunk)
            if self._received > size:
                return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        head, self._head = self._head, []
        for chunk in head:
            yield chunk
        while chunk := await self._read():
            yield chunk


async def forward(
    exchange: Exchange,
    pool: UpstreamPool,
    *,
    method: str,
    path_qs: str,
    headers: CIMultiDict[str],
    body: RequestBody | None,
    request_id: str,
    preserve_host: bool,
    client: str = "",
    content_length: int | None = None,
    finish_headers: HeaderHook | None = None,
    close: bool = False,
    record: RequestRecord | None = None,
) -> int:
    """Send the request upstream and stream the answer to the client (its status is
    returned); raise UpstreamError before headers, Full when the capacity bounds refuse it,
    ClientBodyError for a broken body."""
    settings = pool.settings
    data: bytes | RequestBody | None = body
    streaming: Slots | None = None
    if body is not None:
        whole = await body.buffer(settings.request_buffer, content_length)
        if whole is not None:
            data = whole
        else:
            streaming = pool.streaming
            streaming.take_now(client)
    try:
        await pool.connections.take(settings.pool_timeout)
        try:
            return await _exchange(exchange, pool, method, path_qs, headers, data,
                                   request_id, preserve_host, finish_headers, close, record)
        finally:
            pool.connections.give_back()
    finally:
        if streaming is not None:
            streaming.give_back_for(client)


async def _exchange(
    exchange: Exchange,
    pool: UpstreamPool,
    method: str,
    path_qs: str,
    headers: CIMultiDict[str],
    data: bytes | RequestBody | None,
    request_id: str,
    preserve_host: bool,
    finish_headers: HeaderHook | None,
    close: bool,
    record: RequestRecord | None,
) -> int:
    idempotent = method in IDEMPOTENT
    attempts = pool.settings.retries + 1 if idempotent else 1
    body = data if isinstance(data, RequestBody) else None
    # The body's framing, said once for every attempt: a received body by its length, a
    # streamed one as the client framed it (its Content-Length, else chunked).
    chunked = False
    if body is not None:
        if "Content-Length" not in headers:
            chunked = True
            headers["Transfer-Encoding"] = "chunked"
    elif data is not None and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(data))
    head_only = method == "HEAD"
    targets = pool.pools_from_next()
    for attempt in range(attempts):
        target = targets[attempt % len(targets)]
        if not preserve_host or "Host" not in headers:  # (an HTTP/1.0 client may send none)
            headers["Host"] = target.authority
        head = encode_head(method, path_qs, headers)
        started = time.perf_counter()
        try:
            conn = target.take_idle()
            if conn is None:
                conn = await target.connect()
            try:
                upstream = await conn.send(head, data, chunked=chunked, head_only=head_only)
            except UpstreamBroken as exc:
                # A reused connection the upstream had closed while it was idle: the request
                # reached no application, so an idempotent one goes once more, on a fresh one.
                if not (exc.stale and idempotent and (body is None or not body.started)):
                    raise
                conn = await target.connect()
                upstream = await conn.send(head, data, chunked=chunked, head_only=head_only)
        except UpstreamBroken as exc:
            if body is not None and body.error is not None:
                error = body.error
                raise ClientBodyError(error.status, error.detail, error.answered) from exc
            failure = exc.failure
            if failure is CONNECT_FAILED or failure is CONNECT_TIMEOUT:
                target.health.connect_failed()  # passive health (health.py)
            if failure.retryable and (body is None or not body.started) \
                    and attempt + 1 < attempts:
                upstream_error(target.base_url, failure.kind)  # the last one: the handler
                continue
            raise UpstreamError(failure, target.base_url) from exc
        target.health.connected()
        took = time.perf_counter() - started
        upstream_duration(target.base_url, took)
        if record is not None:
            record.upstream_seconds = took
        if upstream.status == 101 or upstream.status > 599:
            upstream.close()  # not HTTP any more (or never was): never pooled again
            raise UpstreamError(UpstreamFailure(
                502, "protocol", f"the upstream answered with status {upstream.status}, "
                "which is not relayed"), target.base_url)
        try:
            out = downstream_response_headers(upstream.headers, version=exchange.version,
                                              request_id=request_id)
            if finish_headers is not None:
                finish_headers(out)
            return await _relay(exchange, upstream, out, close, record)
        finally:
            upstream.release()
    raise AssertionError("the last attempt returns or raises")


async def _relay(
    exchange: Exchange,
    upstream: UpstreamResponse,
    response_headers: CIMultiDict[str],
    close: bool,
    record: RequestRecord | None,
) -> int:
    # the head goes out with the first body bytes: one write for a small answer
    exchange.start(upstream.status, upstream.reason, response_headers, close)
    try:
        async for chunk in upstream:
            await exchange.write(chunk)
        if record is not None:
            record.body_bytes_out = exchange.bytes_out
    except (UpstreamBroken, OSError) as exc:
        # Headers are out: end the connection without a clean end of message.
        exchange.abort()
        raise ConnectionResetError("upstream body broke off") from exc
    await exchange.end()
    return upstream.status
