"""The compiled route table: (method, host, normalized path) -> Route, first match wins.

Matching cost must not grow with the number of routes. Exact paths live in a dict; prefixes
live in a dict keyed by prefix, probed once for each distinct prefix length that fits the path.
Each probe yields candidate route indexes in policy order; the lowest index whose method and
host also match wins, which is exactly "first match wins" over the whole list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from gateway.config.model import Route, RouteMatch


def host_matches(pattern: str | None, host: str) -> bool:
    """`host` is lower-case without port; a pattern `*.example.com` matches any subdomain."""
    if pattern is None:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def request_host(host_header: str | None) -> str:
    """Host header without port, lower-case (IPv6 literals keep their brackets)."""
    if not host_header:
        return ""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def _accepts(match: RouteMatch, method: str, host: str) -> bool:
    return (match.methods is None or method in match.methods) and host_matches(match.host, host)


class Router:
    """Route lookup compiled once per policy."""

    __slots__ = ("_exact", "_prefix", "_prefix_lengths", "_routes")

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)
        exact: defaultdict[str, list[int]] = defaultdict(list)
        prefix: defaultdict[str, list[int]] = defaultdict(list)
        for index, route in enumerate(self._routes):
            m = route.match
            if m.path is not None:
                exact[m.path].append(index)
            else:
                prefix[m.path_prefix or ""].append(index)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefix = {k: tuple(v) for k, v in prefix.items()}
        self._prefix_lengths = tuple(sorted({len(k) for k in prefix}))

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def match(self, method: str, host: str, path: str) -> Route | None:
        """The first route, in policy order, that accepts the request; None when none does."""
        best = len(self._routes)
        routes = self._routes
        for index in self._exact.get(path, ()):
            if _accepts(routes[index].match, method, host):
                best = index
                break
        size = len(path)
        for length in self._prefix_lengths:
            if length > size:
                break
            for index in self._prefix.get(path[:length], ()):
                if index >= best:
                    break
                if _accepts(routes[index].match, method, host):
                    best = index
                    break
        return routes[best] if best < len(routes) else None

    def shadowed(self) -> list[tuple[Route, Route]]:
        """(route, earlier route) pairs where the earlier one catches every request of the later."""
        out = []
        for i, later in enumerate(self._routes):
            for earlier in self._routes[:i]:
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
