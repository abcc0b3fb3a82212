"""Load a policy file into a frozen `Policy`, reporting every problem as FILE:LINE:COL.

One builder per section, each reading positioned YAML nodes through a `Reader`. A section the
gateway does not know yet is an unknown key: nothing in a policy file is silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml
from yarl import URL

from gateway.config.errors import PolicyError, Problem
from gateway.config.reader import Reader
from gateway.config.sections import cors_and_headers, csp_reports, rate_limits
from gateway.config.source import Document, read_document
from gateway.http.normalize import PathRejected, normalize_path
from gateway.settings import path_matching
from gateway.settings.csp import CspReports
from gateway.settings.policy import (
    AccessLog,
    Address,
    Observability,
    Policy,
    Route,
    RouteMatch,
    ServerLimits,
    ServerSettings,
    ServerTimeouts,
    UpstreamSettings,
    UpstreamTarget,
    shadowed_routes,
)
from gateway.settings.ratelimit import RedisSettings
from gateway.settings.sentry import SentrySettings
from gateway.tokens import TOKEN

# Every mapping the policy file may contain and its keys: the loader reads these, and the test
# suite checks that docs/policy.md documents each one.
KEYS: dict[str, tuple[str, ...]] = {
    "": ("version", "extends", "environment", "server", "upstream", "redis", "rate_limits",
         "cors", "headers", "csp_reports", "observability", "routes"),
    "server": ("listen", "admin_listen", "workers", "trusted_proxies", "timeouts", "limits",
               "watch", "watch_interval", "path_matching", "client_identity_headers"),
    "server.timeouts": ("header", "idle", "body", "shutdown"),
    "server.limits": ("max_body_size", "max_header_size", "max_headers",
                      "max_websocket_message", "max_connections", "max_requests_in_progress"),
    "server.path_matching": ("case_sensitive", "trailing_slash", "path_parameters",
                             "trailing_dots"),
    "upstream": ("url", "targets", "timeouts", "max_connections", "retries", "preserve_host",
                 "pool_timeout", "max_websockets", "max_websockets_per_client",
                 "max_streaming_bodies", "max_streaming_bodies_per_client", "request_buffer"),
    "upstream.timeouts": ("connect", "read"),
    "routes[]": ("name", "match", "websocket", "rate_limits", "cors", "headers"),
    "routes[].match": ("path", "path_prefix", "methods", "host"),
    **rate_limits.KEYS,
    **cors_and_headers.KEYS,
    **csp_reports.KEYS,
    "observability": ("access_log", "sentry"),
    "observability.sentry": ("dsn", "traces_sample_rate", "profiles_sample_rate"),
    "observability.access_log": ("enabled", "format", "exclude_routes"),
}
_PORT = re.compile(r"[0-9]{1,5}")
_URL_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")
_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
_METHOD = re.compile(r"[A-Z][A-Z0-9\-_]*")
# what the gateway sets on every forwarded request: not removable as a client's claim
_GATEWAY_SET = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                          "x-real-ip", "x-request-id", "forwarded", "via"})
_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9\-]*[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Loaded:
    policy: Policy
    warnings: tuple[Problem, ...]
    document: Document  # the merged, interpolated YAML the policy was built from


def load_policy(path: str | Path, environ: Mapping[str, str] | None = None) -> Loaded:
    """The policy in `path` (and what it extends) with its warnings.

    Raises PolicyError listing every error. `environ` defaults to the process environment.
    """
    path = Path(path)
    reader = Reader(str(path))
    document = read_document(path, os.environ if environ is None else environ, reader)
    policy = None
    if document is not None:
        policy = _build_policy(reader, document.root, document.files)
    # in file order (the file named first, then what it extends), then line and column
    files = document.files[::-1] if document is not None else ()
    reader.problems.sort(key=lambda p: (files.index(p.file) if p.file in files else len(files),
                                        p.line, p.column))
    errors = [p for p in reader.problems if not p.warning]
    if errors or policy is None or document is None:
        raise PolicyError(errors)
    return Loaded(policy, tuple(p for p in reader.problems if p.warning), document)


def _build_policy(r: Reader, root: yaml.Node, files: tuple[str, ...]) -> Policy | None:
    doc = r.mapping(root, KEYS[""], "the policy file")
    if doc is None:
        return None
    version = None
    if "version" not in doc:
        r.error(root, "missing required key 'version' (write `version: 1`)")
    else:
        version = r.integer(doc["version"], "version")
        if version is not None and version != 1:
            r.error(doc["version"], f"unsupported policy version {version}; this gateway reads 1")
    environment: str | None = "development"
    if "environment" in doc:
        environment = r.string(doc["environment"], "environment")
        if environment == "":
            r.error(doc["environment"], "environment must not be empty")
            environment = None
    server = _server(r, doc["server"]) if "server" in doc else ServerSettings()
    upstream = None
    if "upstream" not in doc:
        r.error(root, "missing required key 'upstream'")
    else:
        upstream = _upstream(r, doc["upstream"])
    redis = rate_limits.read_redis(r, doc["redis"]) if "redis" in doc \
        else RedisSettings()
    limits = _Named(rate_limits.read_rate_limits(r, doc["rate_limits"]),
                    doc["rate_limits"]) if "rate_limits" in doc else _Named({})
    cors = _Named(cors_and_headers.read_cors(r, doc["cors"]), doc["cors"]) if "cors" in doc \
        else _Named({})
    headers = _Named(cors_and_headers.read_headers(r, doc["headers"]), doc["headers"]) \
        if "headers" in doc else _Named({})
    collector = csp_reports.read_csp_reports(r, doc["csp_reports"], limits) \
        if "csp_reports" in doc else None
    observability = _observability(r, doc["observability"]) if "observability" in doc \
        else Observability()
    routes: tuple[Route, ...] = ()
    if "routes" not in doc:
        r.error(root, "missing required key 'routes'")
    else:
        routes = _routes(r, doc["routes"], limits, cors, headers)
    if "routes" in doc:
        _warn_unused(r, doc, routes, collector)
    if server is not None and redis is not None and server.workers > 1 and not redis.url \
            and counts_requests(routes, collector):
        r.error(_key_node(doc["server"], "workers"), workers_without_redis(server.workers))
    if version is None or server is None or upstream is None or redis is None \
            or environment is None:
        return None
    return Policy(version=version, environment=environment, server=server, upstream=upstream,
                  routes=routes, source_files=files, redis=redis,
                  rate_limits=MappingProxyType(limits), cors=MappingProxyType(cors),
                  headers=MappingProxyType(headers), csp_reports=collector,
                  observability=observability or Observability())


class _Named(dict):
    """A section's valid named policies; `declared` also holds the names defined with an
    error, so that a use of one is not reported again as an unknown name."""

    def __init__(self, valid: Mapping[str, object], node: yaml.Node | None = None) -> None:
        super().__init__(valid)
        # a tuple, in the file's order, for messages that list them
        self.declared = tuple(
            k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)
        ) if isinstance(node, yaml.MappingNode) else ()


def _warn_unused(r: Reader, doc: dict[str, yaml.Node], routes: tuple[Route, ...],
                 collector: CspReports | None) -> None:
    """A defined policy that no route uses is usually a route lost in an edit (an extending
    file that copied the routes list and dropped one)."""
    used = {
        "rate_limits": {n for route in routes for n in route.rate_limits}
        | set(collector.rate_limits if collector is not None else ()),
        # `default` decorates answers made before a route is known: always in use
        "cors": {route.cors for route in routes} | {"default"},
        "headers": {route.headers for route in routes} | {"default"},
    }
    what = {"rate_limits": "rate limit", "cors": "CORS policy", "headers": "header policy"}
    for section, names in used.items():
        node = doc.get(section)
        if not isinstance(node, yaml.MappingNode):
            continue
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value not in names:
                r.warn(key, f"{what[section]} {key.value!r} is not used by any route")


def counts_requests(routes: tuple[Route, ...], collector: CspReports | None) -> bool:
    """Whether any rate limit applies to some request."""
    return any(route.rate_limits for route in routes) or \
        (collector is not None and bool(collector.rate_limits))


def workers_without_redis(workers: int) -> str:
    """Why N workers cannot count limits in-process (also said by `gateway run --workers`)."""
    return (f"{workers} workers with in-process rate-limit counters would each admit the full "
            "limit: set redis.url (REDIS_URL) so that the workers share their counters, or "
            "run one worker")


def _key_node(mapping: yaml.Node, key: str) -> yaml.Node:
    """The value node of `key` in a mapping node (the mapping itself when absent)."""
    for k, v in getattr(mapping, "value", ()):
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return mapping


def _sentry(r: Reader, node: yaml.Node) -> SentrySettings | None:
    m = r.mapping(node, KEYS["observability.sentry"], "observability.sentry")
    if m is None:
        return None
    dsn = ""
    if "dsn" in m and not (isinstance(m["dsn"], yaml.ScalarNode)
                           and m["dsn"].tag == "tag:yaml.org,2002:null"):
        dsn = r.string(m["dsn"], "observability.sentry.dsn")
        if dsn and not dsn.startswith(("https://", "http://")):
            r.error(m["dsn"], "observability.sentry.dsn must be an http(s) URL")
            dsn = None
    rates = {}
    for key in ("traces_sample_rate", "profiles_sample_rate"):
        rates[key] = r.number(m[key], f"observability.sentry.{key}", 0, 1) if key in m else -1.0
    if dsn is None or None in rates.values():
        return None
    return SentrySettings(dsn, *(None if v == -1.0 else v for v in rates.values()))


def _observability(r: Reader, node: yaml.Node) -> Observability | None:
    m = r.mapping(node, KEYS["observability"], "observability")
    if m is None:
        return None
    sentry = _sentry(r, m["sentry"]) if "sentry" in m else SentrySettings()
    if "access_log" not in m:
        return Observability(sentry=sentry) if sentry is not None else None
    a = r.mapping(m["access_log"], KEYS["observability.access_log"], "observability.access_log")
    if a is None or sentry is None:
        return None
    d = AccessLog()
    enabled = r.boolean(a["enabled"], "observability.access_log.enabled") \
        if "enabled" in a else d.enabled
    fmt = r.string(a["format"], "observability.access_log.format") if "format" in a \
        else d.format
    if fmt is not None and fmt not in ("json", "text"):
        r.error(a["format"], "observability.access_log.format must be json or text")
        fmt = None
    exclude = d.exclude_routes
    if "exclude_routes" in a:
        what = "observability.access_log.exclude_routes"
        names = _names(r, r.string_list(a["exclude_routes"], what), what, _ROUTE_NAME,
                       "a route name")
        exclude = frozenset(names) if names is not None else None
    if enabled is None or fmt is None or exclude is None:
        return None
    return Observability(AccessLog(enabled, fmt, exclude), sentry)


def _address(r: Reader, node: yaml.Node, what: str) -> Address | None:
    text = r.string(node, what)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        r.error(node, f"{what} must be HOST:PORT (for example 0.0.0.0:8080 or [::1]:8080)")
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        r.error(node, f"{what}: write an IPv6 address in brackets, e.g. [::1]:8080")
        return None
    host = host[1:-1] if bracketed else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            r.error(node, f"{what}: {host!r} is not an IP address")
            return None
    return Address(host, int(port))


def _server(r: Reader, node: yaml.Node) -> ServerSettings | None:
    m = r.mapping(node, KEYS["server"], "server")
    if m is None:
        return None
    d = ServerSettings()
    listen = _address(r, m["listen"], "server.listen") if "listen" in m else d.listen
    admin = _address(r, m["admin_listen"], "server.admin_listen") if "admin_listen" in m \
        else d.admin_listen
    workers = r.integer(m["workers"], "server.workers", 1, 256) if "workers" in m else d.workers
    trusted = d.trusted_proxies
    if "trusted_proxies" in m:
        nets = []
        for item, text in _cidr_items(r, m["trusted_proxies"], "server.trusted_proxies"):
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                r.error(item, f"server.trusted_proxies: {text!r} is not a CIDR ({exc})")
        trusted = tuple(nets)
    timeouts = d.timeouts
    if "timeouts" in m:
        tm = r.mapping(m["timeouts"], KEYS["server.timeouts"], "server.timeouts")
        if tm is not None:
            values = {k: r.duration(v, f"server.timeouts.{k}") for k, v in tm.items()}
            timeouts = ServerTimeouts(**{k: v for k, v in values.items() if v is not None})
    limits = d.limits
    if "limits" in m:
        lm = r.mapping(m["limits"], KEYS["server.limits"], "server.limits")
        if lm is not None:
            values = {}
            for key in ("max_body_size", "max_header_size", "max_websocket_message"):
                if key in lm:
                    values[key] = r.size(lm[key], f"server.limits.{key}")
            if "max_headers" in lm:
                values["max_headers"] = r.integer(lm["max_headers"], "server.limits.max_headers",
                                                  1, 1000)
            for key in ("max_connections", "max_requests_in_progress"):
                if key in lm:
                    values[key] = r.integer(lm[key], f"server.limits.{key}", 1, 1_000_000)
            limits = ServerLimits(**{k: v for k, v in values.items() if v is not None})
    watch = r.boolean(m["watch"], "server.watch") if "watch" in m else d.watch
    interval = r.duration(m["watch_interval"], "server.watch_interval") \
        if "watch_interval" in m else d.watch_interval
    matching = _path_matching(r, m["path_matching"]) if "path_matching" in m \
        else d.path_matching
    identity = d.client_identity_headers
    if "client_identity_headers" in m:
        what = "server.client_identity_headers"
        listed = r.string_list(m["client_identity_headers"], what)
        identity = _names(r, listed, what, TOKEN, "a header name")
        for item, text in listed or ():
            if text.lower() in _GATEWAY_SET:
                r.error(item, f"server.client_identity_headers: {text} is set by the gateway "
                        "itself (see server.trusted_proxies)")
                identity = None
    if listen is None or admin is None or workers is None or watch is None or interval is None \
            or matching is None or identity is None:
        return None
    if _same_socket(listen, admin):
        r.error(m.get("admin_listen", node), f"server.admin_listen {admin} and server.listen "
                f"{listen} would use the same port; give the admin listener a port of its own")
    return ServerSettings(listen=listen, admin_listen=admin, workers=workers,
                          trusted_proxies=trusted, timeouts=timeouts, limits=limits,
                          watch=watch, watch_interval=interval, path_matching=matching,
                          client_identity_headers=identity)


def _names(r: Reader, items: list[tuple[yaml.Node, str]] | None, what: str,
           grammar: re.Pattern[str], kind: str) -> tuple[str, ...] | None:
    """The names of a list read by `r.string_list`, each matching `grammar`; None (each bad
    one reported) otherwise."""
    if items is None:
        return None
    bad = [(item, text) for item, text in items if not grammar.fullmatch(text)]
    for item, text in bad:
        r.error(item, f"{what}: {text!r} is not {kind}")
    return None if bad else tuple(text for _, text in items)


def _cidr_items(r: Reader, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
    """CIDRs from a list, or from one string (`${TRUSTED_PROXIES}`: comma- or space-separated,
    or `none`)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        words = node.value.replace(",", " ").split()
        return [] if words == ["none"] else [(node, w) for w in words]
    return r.string_list(node, what) or []


def _same_socket(a: Address, b: Address) -> bool:
    """Whether two listeners would collide: one port, and one address or a wildcard."""
    if a.port != b.port:
        return False
    ips = [ipaddress.ip_address("127.0.0.1" if h == "localhost" else h) for h in (a.host, b.host)]
    return ips[0] == ips[1] or ips[0].is_unspecified or ips[1].is_unspecified


def _path_matching(r: Reader, node: yaml.Node) -> path_matching.PathMatching | None:
    m = r.mapping(node, KEYS["server.path_matching"], "server.path_matching")
    if m is None:
        return None
    d = path_matching.DEFAULT
    values: dict[str, object] = {}
    if "case_sensitive" in m:
        values["case_sensitive"] = r.boolean(m["case_sensitive"],
                                             "server.path_matching.case_sensitive")
    choices = {"trailing_slash": ("strict", "ignore"),
               "path_parameters": path_matching.CHOICES, "trailing_dots": path_matching.CHOICES}
    for key, allowed in choices.items():
        if key in m:
            value = r.string(m[key], f"server.path_matching.{key}")
            if value is not None and value not in allowed:
                r.error(m[key], f"server.path_matching.{key} must be one of "
                        f"{', '.join(allowed)}; got {value!r}")
                value = None
            values[key] = value
    if None in values.values():
        return None
    return path_matching.PathMatching(**{**{k: getattr(d, k) for k in KEYS[
        "server.path_matching"]}, **values})


def _target(r: Reader, node: yaml.Node, what: str) -> UpstreamTarget | None:
    text = r.string(node, what)
    if text is None:
        return None
    try:
        url = URL(text)
    except ValueError as exc:
        r.error(node, f"{what}: {text!r} is not a URL ({exc})")
        return None
    authority = text.partition("://")[2].partition("/")[0]
    if authority.startswith("["):
        host_text, _, rest = authority.partition("]")
        host_text += "]"
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "junk")
    elif ":" in authority:
        host_text, _, port_text = authority.rpartition(":")
    else:
        host_text, port_text = authority, ""
    if (port_text and not _PORT.fullmatch(port_text)) or not _URL_HOST.fullmatch(host_text):
        r.error(node, f"{what} must be scheme://host[:port] with a plain host name or IP "
                f"address, got {text!r}")
        return None
    if url.scheme not in ("http", "https") or not url.host:
        r.error(node, f"{what} must be an http:// or https:// URL with a host, got {text!r}")
        return None
    if url.explicit_port == 0:
        r.error(node, f"{what}: port 0 is not a port to connect to")
        return None
    if url.path not in ("", "/") or url.query_string or url.fragment or url.user:
        r.error(node, f"{what} must be scheme://host[:port] only (no path, query or userinfo)")
        return None
    # raw_host: the ASCII (punycode) form; url.host would decode it for the Host header
    port = url.port or (443 if url.scheme == "https" else 80)
    return UpstreamTarget(url.scheme, url.raw_host, port)


def _upstream(r: Reader, node: yaml.Node) -> UpstreamSettings | None:
    m = r.mapping(node, KEYS["upstream"], "upstream")
    if m is None:
        return None
    targets: list[UpstreamTarget] = []
    if ("url" in m) == ("targets" in m):
        r.error(node, "upstream needs exactly one of 'url' or 'targets'")
    elif "url" in m:
        t = _target(r, m["url"], "upstream.url")
        targets = [t] if t else []
    else:
        for item in r.sequence(m["targets"], "upstream.targets") or ():
            t = _target(r, item, "each entry of upstream.targets")
            if t:
                targets.append(t)
        if not targets:
            r.error(m["targets"], "upstream.targets must list at least one URL")
    d = UpstreamSettings(targets=())
    values: dict[str, object] = {}
    if "timeouts" in m:
        tm = r.mapping(m["timeouts"], KEYS["upstream.timeouts"], "upstream.timeouts")
        for key, value in (tm or {}).items():
            values[f"{key}_timeout"] = r.duration(value, f"upstream.timeouts.{key}")
    if "max_connections" in m:
        values["max_connections"] = r.integer(m["max_connections"], "upstream.max_connections",
                                              1, 100_000)
    if "retries" in m:
        values["retries"] = r.integer(m["retries"], "upstream.retries", 0, 10)
    if "preserve_host" in m:
        values["preserve_host"] = r.boolean(m["preserve_host"], "upstream.preserve_host")
    if "pool_timeout" in m:
        values["pool_timeout"] = r.duration(m["pool_timeout"], "upstream.pool_timeout")
    for key in ("max_websockets", "max_websockets_per_client", "max_streaming_bodies",
                "max_streaming_bodies_per_client"):
        if key in m:
            values[key] = r.integer(m[key], f"upstream.{key}", 0, 100_000)
    if "request_buffer" in m:
        values["request_buffer"] = r.size(m["request_buffer"], "upstream.request_buffer")
        if values["request_buffer"] is not None and values["request_buffer"] > 64 * 1024 ** 2:
            r.error(m["request_buffer"], "upstream.request_buffer is held in memory per "
                    "request: at most 64MiB")
            values["request_buffer"] = None
    if not targets:
        return None
    fields = {k: v for k, v in values.items() if v is not None}
    return UpstreamSettings(targets=tuple(targets), **{**_defaults(d), **fields})


def _defaults(d: UpstreamSettings) -> dict[str, object]:
    return {"connect_timeout": d.connect_timeout, "read_timeout": d.read_timeout,
            "max_connections": d.max_connections, "retries": d.retries,
            "preserve_host": d.preserve_host, "pool_timeout": d.pool_timeout,
            "max_websockets": d.max_websockets,
            "max_websockets_per_client": d.max_websockets_per_client,
            "max_streaming_bodies": d.max_streaming_bodies,
            "max_streaming_bodies_per_client": d.max_streaming_bodies_per_client,
            "request_buffer": d.request_buffer}


def _route_path(r: Reader, node: yaml.Node, what: str) -> str | None:
    text = r.string(node, what)
    if text is None:
        return None
    if not text.startswith("/"):
        r.error(node, f"{what} must start with '/'")
        return None
    try:
        normal = normalize_path(text)
    except PathRejected as exc:
        r.error(node, f"{what}: {exc}")
        return None
    if normal != text:
        r.error(node, f"{what} {text!r} is not in normalized form; requests arrive as {normal!r}")
        return None
    return text


def _match(r: Reader, node: yaml.Node, where: str) -> RouteMatch | None:
    m = r.mapping(node, KEYS["routes[].match"], f"{where}.match")
    if m is None:
        return None
    if "path" in m and "path_prefix" in m:
        r.error(node, f"{where}.match takes 'path' or 'path_prefix', not both")
        return None
    path = _route_path(r, m["path"], f"{where}.match.path") if "path" in m else None
    prefix = _route_path(r, m["path_prefix"], f"{where}.match.path_prefix") \
        if "path_prefix" in m else None
    methods = None
    if "methods" in m:
        found = set()
        for item, text in r.string_list(m["methods"], f"{where}.match.methods") or ():
            if not _METHOD.fullmatch(text):
                r.error(item, f"{where}.match.methods: {text!r} is not an upper-case method name")
            else:
                found.add(text)
        methods = frozenset(found)
        if "GET" in methods:
            methods = methods | {"HEAD"}  # HEAD is GET without the body (RFC 9110 9.3.2)
    host = None
    if "host" in m:
        host = r.string(m["host"], f"{where}.match.host")
        if host is not None and not _HOSTNAME.fullmatch(host):
            r.error(m["host"], f"{where}.match.host {host!r} must be a lower-case host name, "
                    "optionally starting with '*.'")
            host = None
    return RouteMatch(path=path, path_prefix=prefix, methods=methods, host=host)


def _route_limits(r: Reader, node: yaml.Node, where: str,
                  limits: Mapping[str, object]) -> tuple[str, ...] | None:
    names: list[str] = []
    ok = True
    for item, name in r.string_list(node, f"{where}.rate_limits") or ():
        if name not in limits:
            ok = False
            if name not in getattr(limits, "declared", ()):  # a broken one is reported there
                known = ", ".join(getattr(limits, "declared", None) or limits) \
                    or "none are defined"
                r.error(item, f"{where}.rate_limits: unknown rate limit {name!r} "
                        f"(defined: {known})")
        elif name in names:
            ok = False
            r.error(item, f"{where}.rate_limits: {name!r} is listed twice")
        else:
            names.append(name)
    return tuple(names) if ok else None


def _named_policy(r: Reader, m: dict[str, yaml.Node], key: str, where: str,
                  defined: Mapping[str, object]) -> tuple[bool, str | None]:
    """(ok, the policy name a route uses): its own, `none`, or the section's `default`."""
    if key not in m:
        return True, "default" if "default" in defined else None
    name = r.string(m[key], f"{where}.{key}")
    if name is None:
        return False, None
    if name == "none":
        return True, None
    if name not in defined:
        if name not in getattr(defined, "declared", ()):  # a broken one is reported there
            known = ", ".join(getattr(defined, "declared", None) or defined) \
                or "none are defined"
            r.error(m[key], f"{where}.{key}: unknown {key} policy {name!r} (defined: {known})")
        return False, None
    return True, name


def _routes(r: Reader, node: yaml.Node, limits: Mapping[str, object],
            cors: Mapping[str, object], headers: Mapping[str, object]) -> tuple[Route, ...]:
    items = r.sequence(node, "routes")
    if items is None:
        return ()
    if not items:
        r.error(node, "routes must list at least one route")
    routes: list[Route] = []
    name_nodes: dict[str, yaml.Node] = {}
    route_nodes: list[yaml.Node] = []
    for i, item in enumerate(items):
        where = f"routes[{i}]"
        m = r.mapping(item, KEYS["routes[]"], where)
        if m is None:
            continue
        name = None
        if "name" not in m:
            r.error(item, f"{where} needs a 'name'")
        else:
            name = r.string(m["name"], f"{where}.name")
            if name is not None and not _ROUTE_NAME.fullmatch(name):
                r.error(m["name"], f"route name {name!r} must be letters, digits, '-', '_' or '.'")
                name = None
            elif name in name_nodes:
                first = name_nodes[name].start_mark.line + 1
                r.error(m["name"], f"duplicate route name {name!r} (first defined on line {first})")
                name = None
        match = _match(r, m["match"], where) if "match" in m else RouteMatch()
        websocket = r.boolean(m["websocket"], f"{where}.websocket") if "websocket" in m else False
        route_limits = _route_limits(r, m["rate_limits"], where, limits) \
            if "rate_limits" in m else ()
        cors_ok, cors_name = _named_policy(r, m, "cors", where, cors)
        headers_ok, headers_name = _named_policy(r, m, "headers", where, headers)
        if name is None or match is None or websocket is None or route_limits is None \
                or not cors_ok or not headers_ok:
            continue
        name_nodes[name] = m["name"]
        routes.append(Route(name=name, match=match, websocket=websocket,
                            rate_limits=route_limits, cors=cors_name, headers=headers_name))
        route_nodes.append(item)
    node_of = dict(zip((rt.name for rt in routes), route_nodes, strict=True))
    for later, earlier in shadowed_routes(routes):
        r.warn(node_of[later.name],
               f"route {later.name!r} is shadowed by the earlier route {earlier.name!r} "
               "and never matches")
    return tuple(routes)
