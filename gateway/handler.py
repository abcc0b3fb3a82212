"""The request handler: orchestrates the pure decisions and the forwarder, in pipeline order.

    harden target -> route -> upgrade check -> body limits -> Expect -> forward (or relay)

Everything the handler needs from the policy is compiled once into a `Runtime` (runtime.py)
when the policy is loaded; a request reads the Runtime reference once, at its start.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict

from gateway.http.client_ip import client_ip, parse_ip
from gateway.http.forwarding import choose_request_id, connection_listed, upstream_request_headers
from gateway.http.normalize import PathRejected, normalize_target
from gateway.http.problem import problem_response
from gateway.proxy.forwarder import ClientBodyError, RequestBody, UpstreamError, forward
from gateway.proxy.websocket import WebSocketRegistry, relay_websocket
from gateway.routing import request_host
from gateway.runtime import Runtime

log = logging.getLogger("gateway.handler")
# CONNECT would make the gateway a tunnel; TRACE/TRACK echo credentials (cross-site tracing).
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})


class Handler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.websockets = WebSocketRegistry()
        self.draining = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        headers = request.headers
        peer = request.remote or ""
        peer_trusted = bool(rt.trusted) and rt.trusted.trusts(parse_ip(peer))
        request_id = choose_request_id(headers, peer_trusted)

        def refuse(status: int, detail: str, close: bool = False) -> web.StreamResponse:
            return problem_response(status, detail, request_id=request_id,
                                    close=close or self.draining)

        try:
            path, query = normalize_target(request.raw_path)
        except PathRejected as exc:
            return refuse(400, str(exc), close=True)
        method = request.method
        if method in REFUSED_METHODS:
            return refuse(405, f"{method} is not allowed through this gateway")
        route = rt.router.match(method, request_host(headers.get("Host")), path)
        if route is None:
            return refuse(404, "no route matches this request")

        websocket = False
        if "Upgrade" in headers:
            wants_ws = (headers["Upgrade"].strip().lower() == "websocket"
                        and "upgrade" in connection_listed(headers))
            if wants_ws and method == "GET":
                if not route.websocket:
                    return refuse(403, "WebSocket upgrade is not allowed on this route")
                websocket = True
            # any other upgrade (h2c, ...) is hop-by-hop and dropped below

        limits = rt.policy.server.limits
        length = request.content_length
        if length is not None and length > limits.max_body_size:
            return refuse(413, f"request body exceeds {limits.max_body_size} bytes", close=True)
        expect = headers.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                return refuse(417, "only 'Expect: 100-continue' is supported")
            if request.version >= (1, 1) and request.body_exists:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0

        upstream_settings = rt.policy.upstream
        fwd_headers = upstream_request_headers(
            headers,
            version=(request.version.major, request.version.minor),
            peer=peer,
            peer_trusted=peer_trusted,
            client_ip=client_ip(peer, headers.getall("X-Forwarded-For", ()), rt.trusted),
            scheme="https" if request.secure else "http",
            request_id=request_id,
            upstream_authority=None,
        )
        path_qs = path if query is None else f"{path}?{query}"
        try:
            if websocket:
                return await relay_websocket(
                    request, rt.pool, self.websockets, path_qs=path_qs, headers=fwd_headers,
                    response_headers=CIMultiDict({"X-Request-ID": request_id}),
                    preserve_host=upstream_settings.preserve_host)
            body = None
            if request.body_exists:
                body = RequestBody(request.content, limits.max_body_size,
                                   rt.policy.server.timeouts.body)
            response = await forward(
                request, rt.pool, method=method, path_qs=path_qs, headers=fwd_headers,
                body=body, request_id=request_id,
                preserve_host=upstream_settings.preserve_host, close=self.draining)
        except UpstreamError as exc:
            log.warning("upstream %s failed (%s): %s", exc.target, exc.failure.kind,
                        exc.failure.detail)
            return refuse(exc.failure.status, exc.failure.detail)
        except ClientBodyError as exc:
            return refuse(exc.status, exc.detail, close=True)
        return response
