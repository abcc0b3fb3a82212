"""The decision plan: what the gateway does with one request head, as data.

`plan()` is a pure function of the compiled policy and a request head. The request handler
executes the plan (it adds only what needs I/O: counting against the rate limits, reading a
body, talking to the upstream); `gateway explain` prints it and `gateway test` compares it.
Neither re-derives anything, so what they say is what the data plane does by construction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.access import AccessOutcome, judge
from gateway.admission import Admission, CspReport, Refusal, admit
from gateway.compiled import COLLECTOR, CompiledPolicy, RouteLimits
from gateway.cors import actual as actual_cors
from gateway.cors import preflight as cors_preflight
from gateway.http.client_ip import client_ip, forwarded_hops, parse_ip
from gateway.http.forwarding import upstream_request_headers
from gateway.http.rewrite import rewrite_path
from gateway.identity import NOT_NEEDED, Identity, TokenOutcome
from gateway.ratelimit.keys import limit_tag, storage_key
from gateway.settings.cors import CorsPolicy
from gateway.settings.headers import HeadersPolicy
from gateway.settings.policy import Route
from gateway.settings.ratelimit import RateLimitPolicy

# methods whose requests say nothing of a body when they have none
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class Action(enum.Enum):
    ANSWER = "answer"  # the gateway answers the request itself (a refusal)
    PREFLIGHT = "preflight"  # a CORS preflight, answered by the gateway
    COLLECT_CSP_REPORT = "collect csp report"
    FORWARD = "forward"
    RELAY_WEBSOCKET = "relay websocket"


class IpSource(enum.Enum):
    PEER = "peer"  # the peer is not a trusted proxy: forwarding headers are ignored
    TRUSTED_PEER = "trusted peer"  # a trusted proxy that sent no X-Forwarded-For
    FORWARDED_FOR = "x-forwarded-for"  # walked right to left, skipping trusted hops


class CorsOutcome(enum.Enum):
    NO_POLICY = "no policy"
    NOT_CROSS_ORIGIN = "no origin"
    PREFLIGHT_ALLOWED = "preflight allowed"
    PREFLIGHT_REFUSED = "preflight refused"
    ORIGIN_ALLOWED = "origin allowed"
    ORIGIN_NOT_ALLOWED = "origin not allowed"


class UpstreamHost(enum.Enum):
    CLIENT = "client"  # upstream.preserve_host: the client's Host goes through
    TARGET = "target"  # the chosen target's authority (retries may choose another target)


@dataclass(frozen=True, slots=True)
class Head:
    """A request head as the gateway received it."""

    method: str
    target: str  # the raw request target
    headers: CIMultiDictProxy[str]
    peer: str  # the TCP peer's address
    secure: bool = False  # arrived over TLS at the gateway
    version: tuple[int, int] = (1, 1)
    content_length: int | None = None
    has_body: bool = False


@dataclass(frozen=True, slots=True)
class LimitCheck:
    policy: RateLimitPolicy
    key: str  # the storage key the request counts against
    note: str | None  # when a header of the key was missing and the client IP stood in


@dataclass(frozen=True, slots=True)
class Plan:
    head: Head
    action: Action
    verdict: Admission | Refusal | CspReport
    peer_trusted: bool
    https: bool  # per the connection, or X-Forwarded-Proto from a trusted proxy
    client_ip: str
    ip_source: IpSource
    # the policies that speak for this request; before a route is known, the defaults (so
    # that a browser can read the gateway's 404)
    cors_policy: CorsPolicy | None
    headers_policy: HeadersPolicy | None
    cors: CorsOutcome
    cors_headers: tuple[tuple[str, str], ...]  # preflight answer, or added to the response
    cors_reason: str  # why a preflight was refused
    # counted against (None: nothing is: no limits, a preflight, or a refusal)
    limits: RouteLimits | None
    limits_name: str | None  # the route's name, or the CSP collector's
    upstream_host: UpstreamHost
    close: bool  # the answer ends the connection (a chunked request body)
    request_id: str
    access: AccessOutcome = AccessOutcome.NO_LIST  # the route's access list on the client IP
    access_list: str | None = None  # that list's name
    identity: Identity = NOT_NEEDED  # the bearer JWT, where a limit or the route needs it

    @property
    def route(self) -> Route | None:
        return self.verdict.route

    def limit_checks(self, compiled: CompiledPolicy) -> tuple[LimitCheck, ...]:
        """The counters this request counts against (the handler caches them per client)."""
        if self.limits is None:
            return ()
        return limit_checks(compiled, self.limits, self.client_ip, self.head.headers,
                            self.identity)

    def upstream_headers(self, compiled: CompiledPolicy) -> CIMultiDict[str]:
        """The headers sent upstream (FORWARD, RELAY_WEBSOCKET), Host as `upstream_host` says
        (the forwarder puts the chosen target's authority there). Built on demand: a request
        refused after the plan (429) never needs them."""
        head = self.head
        out = upstream_request_headers(
            head.headers, version=head.version, peer=head.peer, peer_trusted=self.peer_trusted,
            client_ip=self.client_ip, scheme="https" if head.secure else "http",
            request_id=self.request_id, upstream_authority=None, rules=compiled.forwarding)
        if not head.has_body and head.method not in BODYLESS_METHODS \
                and "Content-Length" not in out:
            # said here rather than left to the HTTP client (aiohttp adds it for these
            # methods), so that the plan shows it; a body's own framing comes with the body
            out["Content-Length"] = "0"
        return out

    @property
    def exempt_from(self) -> tuple[str, ...]:
        """Limits of the route that do not count this client (its `exempt` ranges)."""
        if self.limits is None:
            return ()
        applying = self.limits.applying_to(self.client_ip)
        return tuple(p.name for p in self.limits.policies if p not in applying)


def peer_trusted(compiled: CompiledPolicy, peer: str) -> bool:
    return bool(compiled.trusted) and compiled.trusted.trusts(parse_ip(peer))


def arrived_over_https(secure: bool, trusted_peer: bool, headers: CIMultiDictProxy[str]
                       ) -> bool:
    """Over TLS to the gateway, or to a trusted proxy that says so in X-Forwarded-Proto."""
    return secure or (trusted_peer and headers.get("X-Forwarded-Proto", "").lower() == "https")


def limit_checks(compiled: CompiledPolicy, limits: RouteLimits, client: str,
                 headers: CIMultiDictProxy[str], identity: Identity = NOT_NEEDED
                 ) -> tuple[LimitCheck, ...]:
    prefix = compiled.policy.redis.key_prefix
    out = []
    for policy in limits.applying_to(client):
        tag, note = limit_tag(policy, client, headers, identity)
        out.append(LimitCheck(policy, storage_key(prefix, policy, tag), note))
    return tuple(out)


def plan(compiled: CompiledPolicy, head: Head, *, trusted_peer: bool, request_id: str
         ) -> Plan:
    """What the gateway does with `head`. `trusted_peer` is `peer_trusted(compiled,
    head.peer)` (the caller needs it first, to choose the request ID)."""
    headers = head.headers
    https = arrived_over_https(head.secure, trusted_peer, headers)
    xff = headers.getall("X-Forwarded-For", ())
    client = client_ip(head.peer, xff, compiled.trusted)
    source = IpSource.PEER if not trusted_peer else \
        IpSource.FORWARDED_FOR if forwarded_hops(xff) else IpSource.TRUSTED_PEER
    verdict = admit(compiled, head.method, head.target, headers, head.content_length,
                    head.has_body, head.version)
    access, access_list = AccessOutcome.NO_LIST, None
    if not isinstance(verdict, Refusal):
        listed = compiled.route_access.get(
            COLLECTOR if isinstance(verdict, CspReport) else verdict.route.name)
        access = judge(listed, client)
        if listed is not None:
            access_list = listed.name
        if access.refused:  # before anything else: a refused client spends no quota
            # the list's name and ranges are the operator's: explain says them, not the answer
            verdict = Refusal(403, "this route is not served to your address",
                              route=verdict.route, path=verdict.path)
    identity = NOT_NEEDED
    if not isinstance(verdict, Refusal) and compiled.verifier is not None and (
            COLLECTOR if isinstance(verdict, CspReport) else verdict.route.name
    ) in compiled.identified:
        identity = compiled.verifier.identify(headers.get("Authorization"))
        # a browser's CORS preflight never carries credentials (Fetch standard): not refused
        if isinstance(verdict, Admission) and verdict.route.require_jwt \
                and not verdict.preflight and identity.outcome is not TokenOutcome.VALID:
            # RFC 6750 3.1: no error code when the request carried no token
            challenge = "Bearer" if identity.outcome is TokenOutcome.MISSING else \
                'Bearer error="invalid_token"'
            verdict = Refusal(401, "a valid bearer token is required",
                              route=verdict.route, path=verdict.path,
                              headers=(("WWW-Authenticate", challenge),))
    route = verdict.route
    if isinstance(verdict, Admission) and route is not None and route.rewrite is not None:
        verdict = replace(verdict, upstream_path=rewrite_path(route.rewrite, verdict.path))
    if route is not None:
        cors_policy = compiled.route_cors.get(route.name)
        headers_policy = compiled.route_headers.get(route.name)
    else:
        cors_policy, headers_policy = compiled.default_cors, compiled.default_headers
    preflight = isinstance(verdict, Admission) and verdict.preflight
    cors, cors_headers, cors_reason = _cors(cors_policy, headers, preflight)
    # a chunked body ends its connection (http/protocol.py: trailers must not reach the next
    # request), and the answer says so
    close = "Transfer-Encoding" in headers
    limits = limits_name = None
    if isinstance(verdict, Refusal):
        action = Action.ANSWER
    elif isinstance(verdict, CspReport):
        action, limits_name = Action.COLLECT_CSP_REPORT, COLLECTOR
    elif preflight:  # answered here, reaching nothing: it spends none of the route's quota
        action = Action.PREFLIGHT
    else:
        action = Action.RELAY_WEBSOCKET if verdict.websocket else Action.FORWARD
        limits_name = verdict.route.name
    if limits_name is not None:
        limits = compiled.route_limits.get(limits_name)
    preserve_host = compiled.policy.upstream.preserve_host
    return Plan(head, action, verdict, trusted_peer, https, client, source, cors_policy,
                headers_policy, cors, cors_headers, cors_reason, limits, limits_name,
                UpstreamHost.CLIENT if preserve_host else UpstreamHost.TARGET, close,
                request_id, access, access_list, identity)


def _cors(policy: CorsPolicy | None, headers: CIMultiDictProxy[str], preflight: bool
          ) -> tuple[CorsOutcome, tuple[tuple[str, str], ...], str]:
    if policy is None:
        return CorsOutcome.NO_POLICY, (), ""
    if preflight:
        answer = cors_preflight(policy, headers)
        if answer.allowed:
            return CorsOutcome.PREFLIGHT_ALLOWED, answer.headers, ""
        return CorsOutcome.PREFLIGHT_REFUSED, (), answer.reason
    if "Origin" not in headers:
        return CorsOutcome.NOT_CROSS_ORIGIN, (), ""
    added = actual_cors(policy, headers)
    if added:
        return CorsOutcome.ORIGIN_ALLOWED, tuple(added), ""
    return CorsOutcome.ORIGIN_NOT_ALLOWED, (), ""
