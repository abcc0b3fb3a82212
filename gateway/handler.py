"""The request handler: orchestrates the pure decisions and the forwarder, in pipeline order.

    admit (admission.py: target, route, upgrade, body size, Expect) -> client IP
    -> rate limits (ratelimit/: 429 or headers for every response) -> 100 Continue
    -> forward (or relay a WebSocket)

Everything the handler needs from the policy is compiled once into a `Runtime` (runtime.py)
when the policy is loaded; a request reads the Runtime reference once, at its start.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.admission import Refusal, admit
from gateway.http.client_ip import client_ip, parse_ip
from gateway.http.forwarding import choose_request_id, upstream_request_headers
from gateway.http.problem import problem_response
from gateway.observability.metrics import RATELIMIT_DECISIONS
from gateway.proxy.forwarder import ClientBodyError, RequestBody, UpstreamError, forward
from gateway.proxy.websocket import WebSocketRegistry, relay_websocket
from gateway.ratelimit.headers import rate_limit_headers, retry_after, violated
from gateway.ratelimit.keys import limit_tag, storage_key
from gateway.ratelimit.limiter import Decision, RateLimitUnavailable
from gateway.runtime import RouteLimits, Runtime

log = logging.getLogger("gateway.handler")


class Handler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.websockets = WebSocketRegistry()
        self.draining = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime  # read once: the whole request runs under this policy
        headers = request.headers
        peer = request.remote or ""
        peer_trusted = bool(rt.trusted) and rt.trusted.trusts(parse_ip(peer))
        request_id = choose_request_id(headers, peer_trusted)
        extra: list[tuple[str, str]] = []  # headers every response of this route carries

        def refuse(status: int, detail: str, close: bool = False,
                   **fields: object) -> web.StreamResponse:
            return problem_response(status, detail, request_id=request_id,
                                    headers=CIMultiDict(extra), close=close or self.draining,
                                    **fields)

        verdict = admit(rt, request.method, request.raw_path, headers, request.content_length,
                        request.body_exists)
        if isinstance(verdict, Refusal):
            return refuse(verdict.status, verdict.detail, verdict.close)
        client = client_ip(peer, headers.getall("X-Forwarded-For", ()), rt.trusted)

        route_limits = rt.route_limits.get(verdict.route.name)
        if route_limits is not None:
            try:
                decision = await self._check_limits(rt, verdict.route.name, route_limits, client,
                                                    headers)
            except RateLimitUnavailable:
                return refuse(503, "rate limiting is unavailable")
            extra = rate_limit_headers(route_limits.policy_header, decision.results)
            if not decision.admitted:
                extra.append(("Retry-After", str(retry_after(decision.results))))
                names = violated(decision.results)
                return refuse(429, "rate limit exceeded: " + ", ".join(names),
                              **{"violated-policies": names})

        if verdict.send_continue and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

        upstream_settings = rt.policy.upstream
        fwd_headers = upstream_request_headers(
            headers,
            version=(request.version.major, request.version.minor),
            peer=peer,
            peer_trusted=peer_trusted,
            client_ip=client,
            scheme="https" if request.secure else "http",
            request_id=request_id,
            upstream_authority=None,
        )
        path_qs = verdict.path_qs
        limits = rt.policy.server.limits

        def finish_headers(out: CIMultiDict[str]) -> None:
            for name, value in extra:
                out[name] = value

        try:
            if verdict.websocket:
                ws_headers = CIMultiDict({"X-Request-ID": request_id})
                finish_headers(ws_headers)
                return await relay_websocket(
                    request, rt.pool, self.websockets, path_qs=path_qs, headers=fwd_headers,
                    response_headers=ws_headers, preserve_host=upstream_settings.preserve_host)
            body = None
            if request.body_exists:
                body = RequestBody(request.content, limits.max_body_size,
                                   rt.policy.server.timeouts.body)
            return await forward(
                request, rt.pool, method=request.method, path_qs=path_qs, headers=fwd_headers,
                body=body, request_id=request_id, preserve_host=upstream_settings.preserve_host,
                finish_headers=finish_headers if extra else None, close=self.draining)
        except UpstreamError as exc:
            log.warning("upstream %s failed (%s): %s", exc.target, exc.failure.kind,
                        exc.failure.detail)
            return refuse(exc.failure.status, exc.failure.detail)
        except ClientBodyError as exc:
            return refuse(exc.status, exc.detail, close=True)

    async def _check_limits(self, rt: Runtime, route: str, route_limits: RouteLimits,
                            client: str, headers: CIMultiDictProxy[str]) -> Decision:
        prefix = rt.policy.redis.key_prefix
        items = [(p, storage_key(prefix, p, limit_tag(p, client, headers)[0]))
                 for p in route_limits.policies]
        decision = await rt.limiter.decide(items)
        for policy, outcome in decision.results:
            if outcome.allowed:
                label = "allowed"
            elif policy.enforced:
                label = "limited"
            else:
                label = "shadow_limited"
                log.info("shadow rate limit %s would refuse client %s on route %s",
                         policy.name, client, route)
            RATELIMIT_DECISIONS.labels(route, policy.name, label).inc()
        return decision
