"""Load a policy file into a frozen `Policy`, reporting every problem as FILE:LINE:COL.

One builder per section, each reading positioned YAML nodes through a `Reader`. A section the
gateway does not know yet is an unknown key: nothing in a policy file is silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from gateway.config.errors import PolicyError, Problem
from gateway.config.reader import Reader
from gateway.config.sections import access_lists as access_lists_section
from gateway.config.sections import cors_and_headers, csp_reports, rate_limits
from gateway.config.sections import jwt as jwt_section
from gateway.config.sections import observability as observability_section
from gateway.config.sections import routes as routes_section
from gateway.config.sections import server as server_section
from gateway.config.sections import upstream as upstream_section
from gateway.config.source import Document, read_document
from gateway.settings.csp import CspReports
from gateway.settings.policy import (
    Observability,
    Policy,
    Route,
    ServerSettings,
)
from gateway.settings.ratelimit import RedisSettings

# Every mapping the policy file may contain and its keys: the loader reads these, and the test
# suite checks that docs/policy.md documents each one.
KEYS: dict[str, tuple[str, ...]] = {
    "": ("version", "extends", "environment", "server", "upstream", "redis", "rate_limits",
         "cors", "headers", "access_lists", "jwt", "csp_reports", "observability", "routes"),
    **server_section.KEYS,
    **upstream_section.KEYS,
    **routes_section.KEYS,
    **rate_limits.KEYS,
    **observability_section.KEYS,
    **cors_and_headers.KEYS,
    **csp_reports.KEYS,
    **access_lists_section.KEYS,
    **jwt_section.KEYS,
}


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
    server = server_section.read_server(r, doc["server"]) if "server" in doc else ServerSettings()
    upstream = None
    if "upstream" not in doc:
        r.error(root, "missing required key 'upstream'")
    else:
        upstream = upstream_section.read_upstream(r, doc["upstream"])
    redis = rate_limits.read_redis(r, doc["redis"]) if "redis" in doc \
        else RedisSettings()
    limits = _Named(rate_limits.read_rate_limits(r, doc["rate_limits"]),
                    doc["rate_limits"]) if "rate_limits" in doc else _Named({})
    cors = _Named(cors_and_headers.read_cors(r, doc["cors"]), doc["cors"]) if "cors" in doc \
        else _Named({})
    headers = _Named(cors_and_headers.read_headers(r, doc["headers"]), doc["headers"]) \
        if "headers" in doc else _Named({})
    access = _Named(access_lists_section.read_access_lists(r, doc["access_lists"]),
                    doc["access_lists"]) if "access_lists" in doc else _Named({})
    jwt_settings = jwt_section.read_jwt(r, doc["jwt"]) if "jwt" in doc else None
    if "jwt" not in doc:
        _jwt_needed(r, doc, limits)
    collector = csp_reports.read_csp_reports(r, doc["csp_reports"], limits) \
        if "csp_reports" in doc else None
    observability = observability_section.read_observability(r, doc["observability"]) \
        if "observability" in doc else Observability()
    routes: tuple[Route, ...] = ()
    if "routes" not in doc:
        r.error(root, "missing required key 'routes'")
    else:
        routes = routes_section.read_routes(r, doc["routes"], limits, cors, headers,
                                             access, jwt_configured="jwt" in doc)
    if "routes" in doc:
        _warn_unused(r, doc, routes, collector)
    if server is not None and redis is not None and server.workers > 1 and not redis.url \
            and counts_requests(routes, collector):
        r.error(_key_node(doc["server"], "workers"), workers_without_redis(server.workers))
    if version is None or server is None or upstream is None or redis is None \
            or environment is None or ("jwt" in doc and jwt_settings is None):
        return None
    return Policy(version=version, environment=environment, server=server, upstream=upstream,
                  routes=routes, source_files=files, redis=redis,
                  rate_limits=MappingProxyType(limits), cors=MappingProxyType(cors),
                  headers=MappingProxyType(headers), access_lists=MappingProxyType(access),
                  csp_reports=collector, jwt=jwt_settings,
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


def _jwt_needed(r: Reader, doc: dict[str, yaml.Node], limits: Mapping[str, object]) -> None:
    """A limit keyed on a JWT claim with no `jwt` section to verify tokens with."""
    for name, policy in limits.items():
        if any(part.kind == "jwt" for part in getattr(policy, "key", ())):
            node = _key_node(doc["rate_limits"], name)
            key = _key_node(node, "key") if isinstance(node, yaml.MappingNode) else node
            r.error(key, f"rate_limits.{name}.key: a jwt:<claim> key needs the 'jwt' section "
                    "(a secret or a JWKS to verify tokens with)")


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
        "access_lists": {route.access for route in routes},
    }
    what = {"rate_limits": "rate limit", "cors": "CORS policy", "headers": "header policy",
            "access_lists": "access list"}
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


