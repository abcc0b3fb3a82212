"""The request handler: orchestrates the pure decisions and the forwarder, in pipeline order.

    admit (admission.py: target, route, upgrade, body size, Expect) -> forward (or relay)

Everything the handler needs from the policy is compiled once into a `Runtime` (runtime.py)
when the policy is loaded; a request reads the Runtime reference once, at its start.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict

from gateway.admission import Refusal, admit
from gateway.http.client_ip import client_ip, parse_ip
from gateway.http.forwarding import choose_request_id, upstream_request_headers
from gateway.http.problem import problem_response
from gateway.proxy.forwarder import ClientBodyError, RequestBody, UpstreamError, forward
from gateway.proxy.websocket import WebSocketRegistry, relay_websocket
from gateway.runtime import Runtime

log = logging.getLogger("gateway.handler")


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

        verdict = admit(rt, request.method, request.raw_path, headers, request.content_length,
                        request.body_exists)
        if isinstance(verdict, Refusal):
            return refuse(verdict.status, verdict.detail, verdict.close)
        if verdict.send_continue and request.version >= (1, 1):
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
        path_qs = verdict.path_qs
        limits = rt.policy.server.limits
        try:
            if verdict.websocket:
                return await relay_websocket(
                    request, rt.pool, self.websockets, path_qs=path_qs, headers=fwd_headers,
                    response_headers=CIMultiDict({"X-Request-ID": request_id}),
                    preserve_host=upstream_settings.preserve_host)
            body = None
            if request.body_exists:
                body = RequestBody(request.content, limits.max_body_size,
                                   rt.policy.server.timeouts.body)
            response = await forward(
                request, rt.pool, method=request.method, path_qs=path_qs, headers=fwd_headers,
                body=body, request_id=request_id,
                preserve_host=upstream_settings.preserve_host, close=self.draining)
        except UpstreamError as exc:
            log.warning("upstream %s failed (%s): %s", exc.target, exc.failure.kind,
                        exc.failure.detail)
            return refuse(exc.failure.status, exc.failure.detail)
        except ClientBodyError as exc:
            return refuse(exc.status, exc.detail, close=True)
        return response
