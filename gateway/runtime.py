"""A loaded policy compiled for the hot path: the one object a request reads its rules from.

A request takes the current Runtime once, when it starts, so a reload (which replaces the
reference) can never give it part of the old policy and part of the new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.admission import COLLECTOR
from gateway.config import Loaded, Policy
from gateway.http.client_ip import TrustedProxies, parse_ip
from gateway.http.forwarding import ForwardingRules
from gateway.observability.metrics import RATELIMIT_DECISIONS
from gateway.proxy.pool import UpstreamPool
from gateway.ratelimit.headers import policy_header
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.limiter import Limiter
from gateway.routing import Router
from gateway.settings.cors import CorsPolicy
from gateway.settings.headers import HeadersPolicy
from gateway.settings.path_matching import PathMatching
from gateway.settings.ratelimit import RateLimitPolicy


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """A route's rate limits in check order, and its RateLimit-Policy header value."""

    policies: tuple[RateLimitPolicy, ...]
    policy_header: str
    # gateway_ratelimit_decisions_total children by (policy, decision), resolved once
    counters: dict[tuple[str, str], Any]
    # storage keys (and their encoded Redis call) by client IP, when no limit of the route
    # is keyed by a header
    keys_by_client: dict[str, Checks] | None
    any_exempt: bool = False  # some limit exempts a source range

    def applying_to(self, client_ip: str) -> tuple[RateLimitPolicy, ...]:
        """The limits that count this client (those whose `exempt` covers it do not)."""
        if not self.any_exempt:
            return self.policies
        ip = parse_ip(client_ip)
        return tuple(p for p in self.policies
                     if ip is None or not any(ip in net for net in p.exempt))


@dataclass(frozen=True, slots=True)
class Runtime:
    loaded: Loaded
    router: Router
    trusted: TrustedProxies
    pool: UpstreamPool
    limiter: Limiter
    route_limits: dict[str, RouteLimits]  # by route name; routes without limits are absent
    route_cors: dict[str, CorsPolicy]  # by route name; routes without CORS are absent
    route_headers: dict[str, HeadersPolicy]  # likewise, security headers
    default_headers: HeadersPolicy | None  # for answers made before a route is known
    default_cors: CorsPolicy | None  # likewise: a browser can read the gateway's 404
    loaded_at: float  # wall-clock time of the load
    path_matching: PathMatching  # how the upstream reads paths; routes match the same way
    forwarding: ForwardingRules  # which request headers never reach the upstream


    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @classmethod
    def build(cls, loaded: Loaded, previous: Runtime | None = None) -> Runtime:
        """Compile `loaded`. The upstream pool and the Redis connection are kept when their
        settings did not change; in-process rate-limit counters are always carried over."""
        policy = loaded.policy
        if previous is not None and previous.policy.upstream == policy.upstream:
            pool = previous.pool
        else:
            pool = UpstreamPool(policy.upstream)
        if previous is not None and previous.policy.redis == policy.redis:
            limiter = previous.limiter
        else:
            limiter = Limiter(policy.redis, previous.limiter.memory if previous else None)
        route_limits = {}
        for route in policy.routes:
            if route.rate_limits:
                policies = tuple(policy.rate_limits[name] for name in route.rate_limits)
                route_limits[route.name] = _route_limits(route.name, policies)
        if policy.csp_reports is not None and policy.csp_reports.rate_limits:
            policies = tuple(policy.rate_limits[n] for n in policy.csp_reports.rate_limits)
            route_limits[COLLECTOR] = _route_limits(COLLECTOR, policies)
        route_cors = {r.name: policy.cors[r.cors] for r in policy.routes if r.cors}
        route_headers = {r.name: policy.headers[r.headers] for r in policy.routes if r.headers}
        matching = policy.server.path_matching
        return cls(loaded=loaded, router=Router(policy.routes, matching),
                   trusted=TrustedProxies(policy.server.trusted_proxies), pool=pool,
                   limiter=limiter, route_limits=route_limits, route_cors=route_cors,
                   route_headers=route_headers, default_headers=policy.headers.get("default"),
                   default_cors=policy.cors.get("default"),
                   loaded_at=time.time(), path_matching=matching,
                   forwarding=ForwardingRules.build(
                       policy.server.client_identity_headers,
                       [part.header for p in policy.rate_limits.values() for part in p.key
                        if part.header is not None]))


def _route_limits(route: str, policies: tuple[RateLimitPolicy, ...]) -> RouteLimits:
    counters = {(p.name, decision): RATELIMIT_DECISIONS.labels(route, p.name, decision)
                for p in policies for decision in ("allowed", "limited", "shadow_limited")}
    by_client = None if any(part.kind == "header" for p in policies for part in p.key) else {}
    return RouteLimits(policies, policy_header(policies), counters, by_client,
                       any(p.exempt for p in policies))
