"""The streaming forwarder: one request to the upstream, its response back to the client.

Bodies stream in both directions and are never held whole: the request body is read chunk by
chunk (with a per-read timeout and a running size cap) while the upstream consumes it, and the
response body is written as it arrives. Framing is kept: a client's Content-Length goes
upstream as is; an upstream's Content-Length comes back as is, so a short upstream body leaves
the client with an incomplete message rather than a clean end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.http.forwarding import downstream_response_headers
from gateway.http.response import RelayedResponse
from gateway.observability.access_log import RequestRecord
from gateway.observability.metrics import upstream_duration, upstream_error
from gateway.proxy.errors import UpstreamFailure, classify
from gateway.proxy.pool import UpstreamPool

HeaderHook = Callable[[CIMultiDict[str]], None]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ClientBodyError(Exception):
    """The client's request body broke a rule; `status` is what to answer (408 or 413)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class UpstreamError(Exception):
    """The upstream failed before a response was started; carries the mapped failure."""

    def __init__(self, failure: UpstreamFailure, target: str) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.target = target


class RequestBody:
    """The client's body as an async iterator, size-capped and read with a timeout per chunk."""

    __slots__ = ("_content", "_limit", "_timeout", "error", "started")

    def __init__(self, content: aiohttp.StreamReader, limit: int, timeout: float) -> None:
        self._content = content
        self._limit = limit
        self._timeout = timeout
        self.started = False
        self.error: ClientBodyError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        received = 0
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await self._content.readany()
            except TimeoutError:
                self.error = ClientBodyError(408, "request body not received in time")
                raise self.error from None
            if not chunk:
                return
            received += len(chunk)
            if received > self._limit:
                self.error = ClientBodyError(413, f"request body exceeds {self._limit} bytes")
                raise self.error
            yield chunk


async def forward(
    request: web.BaseRequest,
    pool: UpstreamPool,
    *,
    method: str,
    path_qs: str,
    headers: CIMultiDict[str],
    body: RequestBody | None,
    request_id: str,
    preserve_host: bool,
    finish_headers: HeaderHook | None = None,
    close: bool = False,
    record: RequestRecord | None = None,
) -> web.StreamResponse:
    """Send the request upstream and stream the answer; raise UpstreamError before headers."""
    attempts = pool.settings.retries + 1 if method in IDEMPOTENT else 1
    targets = pool.targets_from_next()
    target = targets[0]
    for attempt in range(attempts):
        target = targets[attempt % len(targets)]
        if not preserve_host:
            headers["Host"] = target.authority
        url = URL(target.base_url + path_qs, encoded=True)
        started = time.perf_counter()
        try:
            upstream = await pool.session.request(
                method, url, headers=headers, data=body.__aiter__() if body else None,
                allow_redirects=False, expect100=False, compress=None,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if body is not None and body.error is not None:
                raise body.error from exc
            failure = classify(exc)
            if failure.retryable and (body is None or not body.started) \
                    and attempt + 1 < attempts:
                upstream_error(target.base_url, failure.kind)  # the last one: the handler
                continue
            raise UpstreamError(failure, target.base_url) from exc
        took = time.perf_counter() - started
        upstream_duration(target.base_url, took)
        if record is not None:
            record.upstream_seconds = took
        try:
            out = downstream_response_headers(upstream.headers, version=request.version,
                                              request_id=request_id)
            if finish_headers is not None:
                finish_headers(out)
            return await _relay(request, upstream, out, close, record)
        finally:
            upstream.release()
    raise AssertionError("the last attempt returns or raises")


async def _relay(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    response_headers: CIMultiDict[str],
    close: bool,
    record: RequestRecord | None,
) -> web.StreamResponse:
    response = RelayedResponse(status=upstream.status, reason=upstream.reason,
                               headers=response_headers)
    if close:
        response.force_close()
    await response.prepare(request)
    try:
        sent = 0
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
            sent += len(chunk)
        if record is not None:
            record.body_bytes_out = sent
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # Headers are out: end the connection without a clean end of message.
        raise ConnectionResetError("upstream body broke off") from exc
    await response.write_eof()
    return response
