"""The compiled policy: what a request is judged by.

Built from a loaded policy once per load, without an event loop, a socket or a metric: the
data plane, `gateway explain` and `gateway test` read the same object (explain and test run no
aiohttp session). What a request runs *with* (upstream pools, Redis, per-client caches) is the
live side, gateway/runtime.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.config import Loaded, Policy
from gateway.http.client_ip import TrustedProxies, parse_ip
from gateway.http.forwarding import ForwardingRules
from gateway.identity import Verifier
from gateway.ratelimit.headers import policy_header
from gateway.routing import Router
from gateway.security_headers import apply as apply_security_headers
from gateway.settings.access import AccessList
from gateway.settings.cors import CorsPolicy
from gateway.settings.headers import HeadersPolicy
from gateway.settings.path_matching import PathMatching
from gateway.settings.ratelimit import RateLimitPolicy

COLLECTOR = "(csp-reports)"  # the CSP collector's key in route_limits; no route has this name


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """A route's rate limits in check order, and its RateLimit-Policy header value."""

    policies: tuple[RateLimitPolicy, ...]
    policy_header: str
    keyed_by_header: bool  # some limit's key reads a header or a JWT (keys vary per request)
    any_exempt: bool = False  # some limit exempts a source range

    def applying_to(self, client_ip: str) -> tuple[RateLimitPolicy, ...]:
        """The limits that count this client (those whose `exempt` covers it do not)."""
        if not self.any_exempt:
            return self.policies
        ip = parse_ip(client_ip)
        return tuple(p for p in self.policies
                     if ip is None or not any(ip in net for net in p.exempt))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    loaded: Loaded
    router: Router
    trusted: TrustedProxies
    route_limits: dict[str, RouteLimits]  # by route name; routes without limits are absent
    route_cors: dict[str, CorsPolicy]  # by route name; routes without CORS are absent
    route_headers: dict[str, HeadersPolicy]  # likewise, security headers
    route_access: dict[str, AccessList]  # likewise, access lists (the collector: `default`)
    default_headers: HeadersPolicy | None  # for answers made before a route is known
    default_cors: CorsPolicy | None  # likewise: a browser can read the gateway's 404
    loaded_at: float  # wall-clock time of the load
    path_matching: PathMatching  # how the upstream reads paths; routes match the same way
    forwarding: ForwardingRules  # which request headers never reach the upstream
    verifier: Verifier | None = None  # bearer JWTs (the `jwt` section)
    identified: frozenset[str] = frozenset()  # routes (and the collector) that need the JWT
    # the headers of answers to requests too broken to route (the default security headers
    # over plain HTTP), made once: a parse error or an overload refusal computes nothing
    error_headers: tuple[tuple[str, str], ...] = ()

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @classmethod
    def build(cls, loaded: Loaded) -> CompiledPolicy:
        policy = loaded.policy
        route_limits = {}
        for route in policy.routes:
            if route.rate_limits:
                route_limits[route.name] = _route_limits(
                    tuple(policy.rate_limits[name] for name in route.rate_limits))
        if policy.csp_reports is not None and policy.csp_reports.rate_limits:
            route_limits[COLLECTOR] = _route_limits(
                tuple(policy.rate_limits[n] for n in policy.csp_reports.rate_limits))
        matching = policy.server.path_matching
        identified = {name for name, limits in route_limits.items()
                      if any(part.kind == "jwt" for p in limits.policies for part in p.key)}
        identified |= {r.name for r in policy.routes if r.require_jwt}
        default_headers = policy.headers.get("default")
        error_headers: CIMultiDict[str] = CIMultiDict()
        if default_headers is not None:
            apply_security_headers(default_headers, error_headers, https=False)
        return cls(
            loaded=loaded, router=Router(policy.routes, matching),
            trusted=TrustedProxies(policy.server.trusted_proxies), route_limits=route_limits,
            route_cors={r.name: policy.cors[r.cors] for r in policy.routes if r.cors},
            route_headers={r.name: policy.headers[r.headers] for r in policy.routes
                           if r.headers},
            route_access=_route_access(policy),
            default_headers=default_headers,
            default_cors=policy.cors.get("default"), loaded_at=time.time(),
            path_matching=matching,
            forwarding=ForwardingRules.build(
                policy.server.client_identity_headers,
                [part.header for p in policy.rate_limits.values() for part in p.key
                 if part.header is not None]),
            verifier=Verifier(policy.jwt) if policy.jwt is not None else None,
            identified=frozenset(identified),
            error_headers=tuple(error_headers.items()))


def _route_access(policy: Policy) -> dict[str, AccessList]:
    out = {r.name: policy.access_lists[r.access] for r in policy.routes if r.access}
    if policy.csp_reports is not None and "default" in policy.access_lists:
        out[COLLECTOR] = policy.access_lists["default"]
    return out


def _route_limits(policies: tuple[RateLimitPolicy, ...]) -> RouteLimits:
    return RouteLimits(policies, policy_header(policies),
                       any(part.kind in ("header", "jwt") for p in policies for part in p.key),
                       any(p.exempt for p in policies))
