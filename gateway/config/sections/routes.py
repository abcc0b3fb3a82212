"""Reads the `routes` list (match, limits, CORS and headers policies by name), and warns
about routes that can never match."""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from gateway.config.reader import Reader
from gateway.http.normalize import PathRejected, normalize_path
from gateway.settings.policy import (
    PathRewrite,
    Route,
    RouteMatch,
    shadowed_routes,
)

_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
_METHOD = re.compile(r"[A-Z][A-Z0-9\-_]*")
_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9\-]*[a-z0-9])?")

KEYS = {
    "routes[]": ("name", "match", "websocket", "rate_limits", "cors", "headers", "access",
                 "rewrite", "require_jwt"),
    "routes[].match": ("path", "path_prefix", "methods", "host"),
    "routes[].rewrite": ("strip_prefix", "add_prefix", "replace"),
}


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


def _rewrite(r: Reader, node: yaml.Node, where: str, match: RouteMatch | None
             ) -> PathRewrite | None:
    """A route's `rewrite`; None (reported) when it is wrong. The strip must land on a segment
    boundary of every path the route matches, so the route's match must lie under it."""
    m = r.mapping(node, KEYS["routes[].rewrite"], f"{where}.rewrite")
    if m is None:
        return None
    if not m:
        r.error(node, f"{where}.rewrite needs strip_prefix, add_prefix or replace")
        return None
    if "replace" in m and len(m) > 1:
        r.error(node, f"{where}.rewrite: replace excludes strip_prefix and add_prefix")
        return None
    values: dict[str, str] = {}
    for key, value in m.items():
        text = _route_path(r, value, f"{where}.rewrite.{key}")
        if text is None:
            return None
        if key != "replace" and (text == "/" or text.endswith("/")):
            r.error(value, f"{where}.rewrite.{key} {text!r} must name segments without a "
                    "trailing '/' (e.g. /orders)")
            return None
        values[key] = text
    strip = values.get("strip_prefix")
    if strip is not None and match is not None:
        pattern = match.path_prefix if match.path_prefix is not None else match.path
        under = pattern is not None and (
            pattern.lower().startswith(strip.lower() + "/")
            or (match.path is not None and pattern.lower() == strip.lower()))
        if not under:
            r.error(m["strip_prefix"], f"{where}.rewrite.strip_prefix {strip!r} must cover "
                    "every path the route matches: match path_prefix "
                    f"'{strip}/' (or a path under it)")
            return None
    return PathRewrite(**values)


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
            kind = "access list" if key == "access" else f"{key} policy"
            r.error(m[key], f"{where}.{key}: unknown {kind} {name!r} (defined: {known})")
        return False, None
    return True, name


def read_routes(r: Reader, node: yaml.Node, limits: Mapping[str, object],
                cors: Mapping[str, object], headers: Mapping[str, object],
                access: Mapping[str, object], jwt_configured: bool = False
                ) -> tuple[Route, ...]:
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
        access_ok, access_name = _named_policy(r, m, "access", where, access)
        rewrite = _rewrite(r, m["rewrite"], where, match) if "rewrite" in m else None
        require_jwt = r.boolean(m["require_jwt"], f"{where}.require_jwt") \
            if "require_jwt" in m else False
        if require_jwt and not jwt_configured:
            r.error(m["require_jwt"], f"{where}.require_jwt needs the 'jwt' section (a secret "
                    "or a JWKS to verify tokens with)")
            require_jwt = None
        if name is None or match is None or websocket is None or route_limits is None \
                or not cors_ok or not headers_ok or not access_ok \
                or ("rewrite" in m and rewrite is None) or require_jwt is None:
            continue
        name_nodes[name] = m["name"]
        routes.append(Route(name=name, match=match, websocket=websocket,
                            rate_limits=route_limits, cors=cors_name, headers=headers_name,
                            access=access_name, rewrite=rewrite, require_jwt=require_jwt))
        route_nodes.append(item)
    node_of = dict(zip((rt.name for rt in routes), route_nodes, strict=True))
    for later, earlier in shadowed_routes(routes):
        r.warn(node_of[later.name],
               f"route {later.name!r} is shadowed by the earlier route {earlier.name!r} "
               "and never matches")
    return tuple(routes)
