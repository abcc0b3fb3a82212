"""The request handler: orchestrates the pure decisions and the forwarder, in pipeline order.

    admit (admission.py: target, route, upgrade, body size, Expect) -> client IP
    -> rate limits (ratelimit/: 429 or headers for every response) -> CORS preflight answer
    -> 100 Continue -> receive the body (when small) -> forward (or relay a WebSocket)

Every response, the gateway's own included, goes through `decorate`: CORS headers from the
route's policy (the upstream's Access-Control-* removed), rate-limit headers, security headers.

Everything the handler needs from the policy is compiled once (compiled.py) when the policy is
loaded, and held with the live resources in a `Runtime` (runtime.py); a request reads the
Runtime reference once, at its start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict

from gateway.admission import Admission, Refusal
from gateway.cors import actual as actual_cors
from gateway.cors import add_vary
from gateway.csp_reports import CONTENT_TYPES as CSP_CONTENT_TYPES
from gateway.csp_reports import summarize
from gateway.http.forwarding import choose_request_id
from gateway.http.problem import problem_response
from gateway.http.protocol import Exchange
from gateway.http.response import Answer
from gateway.observability import access_log
from gateway.observability.access_log import RequestRecord
from gateway.observability.metrics import (
    ACCESS_REFUSALS,
    CSP_REPORTS,
    IN_FLIGHT,
    OVERLOAD_REFUSALS,
    RequestMetrics,
    method_label,
    upstream_error,
)
from gateway.observability.sentry import Reporter
from gateway.plan import (
    Action,
    CorsOutcome,
    Head,
    Plan,
    UpstreamHost,
    arrived_over_https,
    peer_trusted,
    plan,
)
from gateway.proxy.capacity import Full
from gateway.proxy.forwarder import ClientBodyError, RequestBody, UpstreamError, forward
from gateway.proxy.websocket import HandshakeRefused, WebSocketRegistry, relay_websocket
from gateway.ratelimit.headers import rate_limit_headers, retry_after, violated
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.limiter import Decision, RateLimitUnavailable
from gateway.runtime import Runtime
from gateway.security_headers import apply as apply_security_headers

log = logging.getLogger("gateway.handler")
csp_log = logging.getLogger("gateway.csp")


class Handler:
    def __init__(self, runtime: Runtime, sentry: Reporter | None = None) -> None:
        self.runtime = runtime
        self.sentry = sentry or Reporter()
        self.websockets = WebSocketRegistry()
        self.draining = False
        self.metrics = RequestMetrics()
        self.in_progress = 0  # requests being handled, WebSockets included (see _handle)
        # of those, requests receiving a body of up to upstream.request_buffer (`_receive`)
        self.receiving = 0

    def counted(self) -> int:
        """Requests in progress as server.limits.max_requests_in_progress counts them: open
        WebSockets are bounded on their own, and a request receiving its (small) body holds a
        connection, bounded by max_connections, not upstream work."""
        return self.in_progress - len(self.websockets) - self.receiving

    def requests_full(self) -> bool:
        """Whether one more request would pass server.limits.max_requests_in_progress."""
        return self.counted() >= self.runtime.policy.server.limits.max_requests_in_progress

    def protocol_error(self, status: int) -> None:
        """Count an answer to a request the parser refused (it never reaches the handler)."""
        self.metrics.observe("unmatched", "OTHER", status, "gateway", 0.0)

    def error_headers(self) -> CIMultiDict[str]:
        """Headers for answers to requests too broken to route: the default security headers."""
        return CIMultiDict(self.runtime.compiled.error_headers)

    async def __call__(self, exchange: Exchange) -> None:
        """Handle one request, and account for it: metrics and the access log."""
        started = time.perf_counter()
        record = RequestRecord(method=exchange.method)
        IN_FLIGHT.inc()
        self.in_progress += 1
        status = 499  # the client went away (or the connection broke) before an answer
        try:
            with self.sentry.transaction(record) as transaction:
                try:
                    status = await self._handle(exchange, record)
                except Exception as exc:
                    self.sentry.exception(exc, record.request_id, record.route)
                    raise
                finally:
                    self.sentry.finish(transaction, record)
        finally:
            IN_FLIGHT.dec()
            self.in_progress -= 1
            elapsed = time.perf_counter() - started
            # a WebSocket's lifetime is not a request latency: count it, do not time it
            self.metrics.observe(record.route, method_label(record.method), status,
                                 record.source, None if status == 101 else elapsed)
            settings = self.runtime.policy.observability.access_log
            # an excluded route (health checks) still logs what it refused
            if settings.enabled and (record.route not in settings.exclude_routes
                                     or status >= 400):
                access_log.write(record, status, exchange.content_length or 0,
                                 exchange.bytes_out, elapsed)

    async def _handle(self, exchange: Exchange, record: RequestRecord) -> int:
        """Execute the plan for one request; the status of the answer it sent."""
        rt = self.runtime  # read once: the whole request runs under this policy
        compiled = rt.compiled
        headers = exchange.headers
        peer = exchange.peer
        trusted = peer_trusted(compiled, peer)
        request_id = choose_request_id(headers, trusted)
        record.request_id = request_id
        exchange.request_id = request_id  # for the 408 the connection writes (a body timeout)
        record.client_ip = peer
        # until the plan is made (overload), the default policies speak, so that a browser can
        # read the gateway's answer
        cors_policy = compiled.default_cors
        headers_policy = compiled.default_headers
        cors_added: tuple[tuple[str, str], ...] = ()
        https = arrived_over_https(exchange.secure, trusted, headers)
        rl_headers: list[tuple[str, str]] = []

        def decorate(out: CIMultiDict[str], cors: bool = True) -> None:
            """What every response of this request gets: CORS, rate-limit and security headers."""
            if cors_policy is not None:
                for name in [n for n in out if n.lower().startswith("access-control-")]:
                    out.popall(name, None)  # only the policy speaks CORS
                if cors:
                    out.extend(cors_added)
                out["Vary"] = add_vary(out.getall("Vary", ()), "Origin")
            for name, value in rl_headers:
                out[name] = value
            if headers_policy is not None:
                apply_security_headers(headers_policy, out, https)

        closing = self.draining or "Transfer-Encoding" in headers

        def refuse(status: int, detail: str, close: bool = False, cors: bool = True,
                   extra: tuple[tuple[str, str], ...] = (),
                   **fields: object) -> int:
            out: CIMultiDict[str] = CIMultiDict(extra)
            decorate(out, cors)
            exchange.send(problem_response(status, detail, request_id=request_id, headers=out,
                                           close=close or closing, **fields))
            return status

        def overloaded() -> bool:
            return self.counted() > rt.policy.server.limits.max_requests_in_progress

        def refuse_overload() -> int:
            OVERLOAD_REFUSALS.labels("requests").inc()
            record.source = "gateway"
            return refuse(503, "the gateway is at its limit of requests in progress; retry "
                          "shortly", close=not exchange.body.is_eof(),
                          extra=(("Retry-After", "1"),))

        # overload: beyond this many requests at once (`counted`), new ones are answered at
        # once rather than slowing every admitted one down
        if overloaded():
            if cors_policy is not None:
                cors_added = tuple(actual_cors(cors_policy, headers))
            return refuse_overload()

        the_plan = plan(compiled, Head(
            exchange.method, exchange.target, headers, peer, exchange.secure,
            exchange.version, exchange.content_length, exchange.has_body),
            trusted_peer=trusted, request_id=request_id)
        verdict = the_plan.verdict
        record.path = verdict.path
        if verdict.route is not None:
            record.route = verdict.route.name
        cors_policy, headers_policy = the_plan.cors_policy, the_plan.headers_policy
        if the_plan.cors is CorsOutcome.ORIGIN_ALLOWED:
            cors_added = the_plan.cors_headers
        if the_plan.action is Action.ANSWER:
            assert isinstance(verdict, Refusal)
            if the_plan.access.refused:
                ACCESS_REFUSALS.labels(record.route, the_plan.access_list).inc()
            return refuse(verdict.status, verdict.detail, verdict.close, extra=verdict.headers)
        client = the_plan.client_ip
        record.client_ip = client

        route_limits = the_plan.limits
        if route_limits is not None:
            try:
                decision = await self._check_limits(rt, the_plan)
            except RateLimitUnavailable:
                return refuse(503, "rate limiting is unavailable")
        else:
            decision = None
        if decision is not None:  # None: no limit of the route counts this client
            rl_headers = rate_limit_headers(route_limits.policy_header, decision.results)
            if not decision.admitted:
                rl_headers.append(("Retry-After", str(retry_after(decision.results))))
                names = violated(decision.results)
                record.limited_by = tuple(names)
                if the_plan.action is Action.COLLECT_CSP_REPORT:
                    CSP_REPORTS.labels("limited").inc()
                return refuse(429, "rate limit exceeded: " + ", ".join(names),
                              **{"violated-policies": names})

        if the_plan.action is Action.COLLECT_CSP_REPORT:
            return await self._collect_csp_report(exchange, rt, client, refuse, decorate,
                                                  request_id)

        if the_plan.action is Action.PREFLIGHT:
            if the_plan.cors is not CorsOutcome.PREFLIGHT_ALLOWED:
                return refuse(403, f"CORS preflight refused: {the_plan.cors_reason}",
                              cors=False)
            out = CIMultiDict()
            decorate(out, cors=False)
            for name, value in the_plan.cors_headers:
                out[name] = add_vary(out.getall(name, ()), value) if name == "Vary" else value
            out["X-Request-ID"] = request_id
            exchange.send(Answer(204, out.items(), close=closing))
            return 204

        assert isinstance(verdict, Admission)
        if verdict.send_continue and exchange.version >= (1, 1):
            exchange.send_continue()

        pool = rt.pools[the_plan.upstream]
        preserve_host = the_plan.upstream_host is UpstreamHost.CLIENT
        fwd_headers = the_plan.upstream_headers(compiled)
        if self.sentry.enabled:
            fwd_headers.update(self.sentry.trace_headers())
        path_qs = verdict.path_qs
        limits = rt.policy.server.limits
        record.source = "upstream"
        try:
            if verdict.websocket:
                ws_headers = CIMultiDict({"X-Request-ID": request_id})
                decorate(ws_headers)
                return await relay_websocket(
                    exchange, pool, self.websockets, path_qs=path_qs, headers=fwd_headers,
                    response_headers=ws_headers, preserve_host=preserve_host,
                    client_ip=client, max_message=limits.max_websocket_message)
            body = None
            if exchange.has_body:
                body = RequestBody(exchange.body, limits.max_body_size,
                                   rt.policy.server.timeouts.body)
                await self._receive(body, pool.settings.request_buffer, exchange.content_length)
                if overloaded():  # it counts again: the gateway may have filled up meanwhile
                    return refuse_overload()
            return await forward(
                exchange, pool, method=exchange.method, path_qs=path_qs, headers=fwd_headers,
                body=body, request_id=request_id, preserve_host=preserve_host,
                client=client, content_length=exchange.content_length,
                finish_headers=decorate, close=closing, record=record)
        except Full as exc:
            record.source = "gateway"
            log.warning("refused (503) for lack of upstream capacity: %s", exc.detail)
            # an unread body cannot be skipped cheaply: the connection ends with the answer
            return refuse(503, exc.detail, close=not exchange.body.is_eof(),
                          extra=(("Retry-After", "1"),))
        except HandshakeRefused as exc:
            record.source = "gateway"
            return refuse(400, str(exc), close=True)
        except UpstreamError as exc:
            record.source = "gateway"
            upstream_error(exc.target, exc.failure.kind)
            self.sentry.upstream_failure(exc.target, exc.failure.kind, exc.failure.status,
                                         request_id, record.route)
            log.warning("upstream %s failed (%s): %s", exc.target, exc.failure.kind,
                        exc.failure.detail)
            return refuse(exc.failure.status, exc.failure.detail)
        except ClientBodyError as exc:
            record.source = "gateway"
            if exc.answered:  # the connection sent it (with the default security headers)
                return exc.status
            return refuse(exc.status, exc.detail, close=True)

    async def _receive(self, body: RequestBody, request_buffer: int,
                       length: int | None) -> None:
        """Receive a body of up to `request_buffer` bytes before anything upstream is taken
        (nginx's request buffering), outside the count of requests in progress: a client
        trickling it holds one connection and at most that many bytes, so slow POSTs cannot
        take every request slot. A larger body streams to the upstream while it arrives,
        holding an upstream connection: it goes on counting (one announced larger returns at
        once; a chunked one leaves the count for its first `request_buffer` bytes only), and
        is bounded by upstream.max_streaming_bodies and ..._per_client. Refusals (408, 413,
        400) are raised as ClientBodyError."""
        self.receiving += 1
        try:  # a client that breaks off or times out mid-body leaves no count behind
            await body.buffer(request_buffer, length)
        finally:
            self.receiving -= 1

    async def _collect_csp_report(self, exchange: Exchange, rt: Runtime, client: str,
                                  refuse: Callable[..., int],
                                  decorate: Callable[[CIMultiDict[str]], None],
                                  request_id: str) -> int:
        content_type = exchange.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in CSP_CONTENT_TYPES:
            CSP_REPORTS.labels("rejected").inc()
            return refuse(415, "CSP reports are JSON (application/csp-report or "
                          "application/reports+json)")
        try:
            async with asyncio.timeout(rt.policy.server.timeouts.body):
                body = await exchange.body.read()  # bounded: Content-Length was checked
        except TimeoutError:
            return refuse(408, "request body not received in time", close=True)
        reports = summarize(body)
        if reports is None:
            CSP_REPORTS.labels("rejected").inc()
            return refuse(400, "not a CSP violation report")
        for report in reports:
            CSP_REPORTS.labels("accepted").inc()
            csp_log.warning("csp violation from %s: %s", client, json.dumps(report))
        out: CIMultiDict[str] = CIMultiDict({"X-Request-ID": request_id})
        decorate(out)
        exchange.send(Answer(204, out.items()))
        return 204

    async def _check_limits(self, rt: Runtime, the_plan: Plan) -> Decision | None:
        route = the_plan.limits_name
        assert route is not None
        state = rt.limit_state[route]
        cache = state.keys_by_client
        client = the_plan.client_ip
        checks = cache.get(client) if cache is not None else None
        if checks is None:
            checks = Checks((c.policy, c.key) for c in the_plan.limit_checks(rt.compiled))
            if cache is not None:
                if len(cache) >= 10_000:  # bounded: start over rather than track recency
                    cache.clear()
                cache[client] = checks
        if not checks.items:
            return None
        decision = await rt.limiter.decide(checks)
        for policy, outcome in decision.results:
            if outcome.allowed:
                label = "allowed"
            elif policy.enforced:
                label = "limited"
            else:
                label = "shadow_limited"
                log.info("shadow rate limit %s would refuse client %s on route %s",
                         policy.name, client, route)
            state.counters[policy.name, label].inc()
        return decision
