"""The loaded policy as frozen objects: what the rest of the gateway reads, never raw YAML."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.settings.access import AccessList
from gateway.settings.cors import CorsPolicy
from gateway.settings.csp import CspReports
from gateway.settings.headers import HeadersPolicy
from gateway.settings.jwt import JwtSettings
from gateway.settings.path_matching import DEFAULT as DEFAULT_PATH_MATCHING
from gateway.settings.path_matching import PathMatching
from gateway.settings.ratelimit import RateLimitPolicy, RedisSettings
from gateway.settings.sentry import SentrySettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerTimeouts:
    header: float = 10.0  # whole request head must arrive within this
    idle: float = 75.0  # keep-alive connection with no request
    body: float = 60.0  # longest wait for the next piece of a request body
    shutdown: float = 30.0  # grace for in-flight requests after SIGTERM


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_size: int = 10 * 1024 * 1024
    max_header_size: int = 8 * 1024  # one header line (and the request line)
    max_headers: int = 100
    max_websocket_message: int = 1024 * 1024  # a relayed frame or message; beyond: close 1009
    # overload protection, per worker: beyond these the gateway answers 503 at once
    max_connections: int = 10_000  # open client connections
    # requests being handled; open WebSockets and requests still receiving a body of up to
    # upstream.request_buffer are not counted (handler.py)
    max_requests_in_progress: int = 1024


# Headers through which some proxy or CDN tells an application who the client is. A client
# can send any of them; the gateway removes them all and sets only its own (X-Forwarded-For,
# X-Real-IP), so an application that reads one of them cannot be fooled.
CLIENT_IDENTITY_HEADERS = (
    "True-Client-IP", "CF-Connecting-IP", "CF-Connecting-IPv6", "X-Client-IP",
    "X-Cluster-Client-IP", "Fastly-Client-IP", "Client-IP", "X-Originating-IP", "X-Remote-IP",
    "X-Remote-Addr", "X-ProxyUser-Ip", "X-Original-Forwarded-For", "X-Forwarded",
    "Forwarded-For", "X-Original-Client-IP", "X-Envoy-External-Address", "X-Azure-ClientIP",
    "X-Azure-SocketIP", "Akamai-Client-IP", "X-Host-IP",
)


@dataclass(frozen=True, slots=True)
class Certificate:
    """One certificate of the public listener, as the policy resolved and checked it."""

    cert: str  # path of the PEM chain
    key: str  # path of its private key
    names: tuple[str, ...]  # DNS names it serves (subjectAltName), lower-case; `*.x` wildcards
    not_after: float  # expiry, seconds since the epoch
    digest: str  # sha256 over both files: a rotated file makes a reload a change


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS on `server.listen`: the first certificate is the default, the others are chosen by
    the name the client asks for (SNI)."""

    certificates: tuple[Certificate, ...]
    min_version: str = "1.2"  # or 1.3


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: Address = Address("0.0.0.0", 8080)
    admin_listen: Address = Address("127.0.0.1", 9090)
    workers: int = 1
    trusted_proxies: tuple[IPNetwork, ...] = ()
    timeouts: ServerTimeouts = ServerTimeouts()
    limits: ServerLimits = ServerLimits()
    watch: bool = True  # reload when a policy file changes on disk
    watch_interval: float = 1.0
    path_matching: PathMatching = DEFAULT_PATH_MATCHING
    client_identity_headers: tuple[str, ...] = CLIENT_IDENTITY_HEADERS
    tls: ServerTls | None = None  # TLS termination on `listen`
    redirect_http: Address | None = None  # a plain listener answering 308 to https


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str  # http | https
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS to https:// targets: whom to trust, and the gateway's own certificate for mutual
    TLS. Paths as the policy resolved them (relative to its file)."""

    ca: str | None = None  # a PEM bundle of the CAs to trust; None: the system's
    cert: str | None = None  # the gateway's client certificate (PEM), with `key`
    key: str | None = None
    digest: str = ""  # sha256 over the files' contents: rotated files make a reload a change


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: GET `path` on each target every `interval`; a target is down
    after `unhealthy` failures in a row (no answer, or not 2xx/3xx within `timeout`) and up
    again after `healthy` successes in a row."""

    path: str
    interval: float = 5.0
    timeout: float = 2.0
    healthy: int = 2
    unhealthy: int = 3


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    targets: tuple[UpstreamTarget, ...]
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    max_connections: int = 512  # pooled connections for ordinary requests
    retries: int = 1
    preserve_host: bool = False
    pool_timeout: float = 1.0  # wait for a free pooled connection, then 503
    max_websockets: int = 256  # relayed WebSockets, on connections of their own
    max_websockets_per_client: int = 16
    max_streaming_bodies: int = 64  # requests forwarded while their body still arrives
    max_streaming_bodies_per_client: int = 4
    request_buffer: int = 64 * 1024  # bodies up to this are received whole before forwarding
    tls: UpstreamTls | None = None  # for https:// targets; None: the system's CAs
    name: str = "default"  # the top-level `upstream`, or the key in `upstreams`
    balance: str = "round_robin"  # or least_connections
    health: HealthCheck | None = None  # active checks; None: only passive ones
    # passive health: a target that failed this many connects in a row is left out for
    # `eject_for` seconds (0: never ejected); a request to it is retried elsewhere as usual
    eject_after: int = 3
    eject_for: float = 10.0


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: str | None = None  # exact, in normalized form
    path_prefix: str | None = None  # string prefix, in normalized form
    methods: frozenset[str] | None = None  # None: any method
    host: str | None = None  # lower-case; a leading "*." matches any subdomain


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """How a route changes the path it forwards (the query is kept): `replace` it, or strip
    `strip_prefix` (whole segments) and then put `add_prefix` in front. Every value is a
    normalized path; the route's match guarantees the strip lands on a segment boundary."""

    strip_prefix: str | None = None
    add_prefix: str | None = None
    replace: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    websocket: bool = False
    rate_limits: tuple[str, ...] = ()  # names from Policy.rate_limits, checked in this order
    cors: str | None = None  # name in Policy.cors (the `default` one unless set), None: no CORS
    headers: str | None = None  # name in Policy.headers, likewise
    access: str | None = None  # name in Policy.access_lists, likewise
    rewrite: PathRewrite | None = None  # the path sent upstream, when not the client's
    require_jwt: bool = False  # a valid bearer JWT or 401 (the `jwt` section verifies it)
    upstream: str = "default"  # name in Policy.upstreams


@dataclass(frozen=True, slots=True)
class AccessLog:
    enabled: bool = True
    format: str = "json"  # json | text
    exclude_routes: frozenset[str] = frozenset({"health"})


@dataclass(frozen=True, slots=True)
class Observability:
    access_log: AccessLog = AccessLog()
    # read at start; a reload does not change it
    sentry: SentrySettings = field(default_factory=SentrySettings)


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    environment: str
    server: ServerSettings
    upstream: UpstreamSettings
    routes: tuple[Route, ...]
    source_files: tuple[str, ...] = field(default=())
    redis: RedisSettings = field(default_factory=RedisSettings)
    rate_limits: Mapping[str, RateLimitPolicy] = field(
        default_factory=lambda: MappingProxyType({}))
    cors: Mapping[str, CorsPolicy] = field(default_factory=lambda: MappingProxyType({}))
    headers: Mapping[str, HeadersPolicy] = field(default_factory=lambda: MappingProxyType({}))
    access_lists: Mapping[str, AccessList] = field(default_factory=lambda: MappingProxyType({}))
    csp_reports: CspReports | None = None
    observability: Observability = Observability()
    jwt: JwtSettings | None = None
    # every upstream by name, the top-level `upstream` as `default`; `upstream` above is the
    # one answers made before a route is known refer to
    upstreams: Mapping[str, UpstreamSettings] = field(
        default_factory=lambda: MappingProxyType({}))


def shadowed_routes(routes: Sequence[Route]) -> list[tuple[Route, Route]]:
    """(route, earlier route) pairs where the earlier one catches every request of the later
    (first match wins, so the later one never matches): a load-time warning."""
    out = []
    for i, later in enumerate(routes):
        for earlier in routes[:i]:
            if _covers(earlier.match, later.match):
                out.append((later, earlier))
                break
    return out


def _covers(a: RouteMatch, b: RouteMatch) -> bool:
    if a.methods is not None and (b.methods is None or not b.methods <= a.methods):
        return False
    if a.host is not None and a.host != b.host:
        return False
    if a.path is not None:
        return b.path == a.path
    prefix = a.path_prefix or ""
    target = b.path if b.path is not None else (b.path_prefix or "")
    return target.startswith(prefix)
