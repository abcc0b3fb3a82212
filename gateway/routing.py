"""The compiled route table: (method, host, normalized path) -> Route, first match wins.

Matching cost must not grow with the number of routes. Routes are indexed once per policy:

- exact paths in a dict;
- path prefixes in a trie of path segments. A prefix ending in `/` (`/api/v1/`) sits at the
  node for its segments; a prefix ending inside a segment (`/api`, `/api/v1/us`) sits in that
  node's `partial` dict, keyed by the text after the last `/`, probed only for the lengths that
  occur at that node. A lookup walks the path's segments once, so its cost follows the path's
  depth, not the table's size;
- in each slot, routes with an exact `host` are indexed by host, so a thousand tenants behind
  one prefix cost one dict lookup. Routes without a host or with a `*.` wildcard are checked in
  order (wildcards cost linear time in their number; exact hosts do not).

Every candidate carries its position in the policy; the lowest position whose method and host
also accept wins, which is exactly "first match wins" over the whole list.

Paths are matched as the upstream reads them (`server.path_matching`, path_matching.py): with
case-insensitive matching the patterns are indexed in lower case (and the caller lowers the
request's path); with `trailing_slash: ignore` an exact path is indexed under both spellings.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from gateway.http.path_matching import route_pattern, slash_twin
from gateway.settings.path_matching import DEFAULT, PathMatching
from gateway.settings.policy import Route, RouteMatch, shadowed_routes


def host_matches(pattern: str | None, host: str) -> bool:
    """`host` is lower-case without port; a pattern `*.example.com` matches any subdomain."""
    if pattern is None:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def request_host(host_header: str | None) -> str:
    """Host header without port, lower-case, without one trailing dot (IPv6 literals keep
    their brackets): `API.Example.com.:443` is `api.example.com`, as DNS reads it."""
    if not host_header:
        return ""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def _accepts(match: RouteMatch, method: str, host: str) -> bool:
    return (match.methods is None or method in match.methods) and host_matches(match.host, host)


class _Slot:
    """Routes sharing one path key, in policy order, split by exact host."""

    __slots__ = ("by_host", "general")

    def __init__(self, routes: Sequence[Route], indexes: list[int]) -> None:
        by_host: defaultdict[str, list[int]] = defaultdict(list)
        general: list[int] = []
        for i in indexes:
            host = routes[i].match.host
            if host is not None and not host.startswith("*."):
                by_host[host].append(i)
            else:
                general.append(i)
        self.by_host = {h: tuple(v) for h, v in by_host.items()}
        self.general = tuple(general)

    def first(self, routes: Sequence[Route], method: str, host: str, best: int) -> int:
        """The lowest accepting index below `best`, or `best`."""
        for i in self.general:
            if i >= best:
                break
            if _accepts(routes[i].match, method, host):
                best = i
                break
        if self.by_host:
            for i in self.by_host.get(host, ()):
                if i >= best:
                    break
                methods = routes[i].match.methods
                if methods is None or method in methods:
                    best = i
                    break
        return best


class _Node:
    __slots__ = ("children", "here", "partial", "partial_lengths")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.here: _Slot | None = None
        self.partial: dict[str, _Slot] = {}
        self.partial_lengths: tuple[int, ...] = ()


class Router:
    """Route lookup compiled once per policy."""

    __slots__ = ("_exact", "_root", "_routes")

    def __init__(self, routes: Sequence[Route], matching: PathMatching = DEFAULT) -> None:
        self._routes = tuple(routes)
        exact: defaultdict[str, list[int]] = defaultdict(list)
        prefixes: defaultdict[str, list[int]] = defaultdict(list)
        for index, route in enumerate(self._routes):
            m = route.match
            if m.path is not None:
                path = route_pattern(m.path, matching)
                exact[path].append(index)
                twin = slash_twin(path) if matching.trailing_slash == "ignore" else None
                if twin is not None:
                    exact[twin].append(index)
            else:
                prefixes[route_pattern(m.path_prefix or "/", matching)].append(index)
        self._exact = {k: _Slot(self._routes, v) for k, v in exact.items()}
        self._root = _Node()
        partial: defaultdict[int, dict[str, list[int]]] = defaultdict(dict)
        nodes: dict[int, _Node] = {}
        for prefix, indexes in prefixes.items():
            *segments, rest = prefix[1:].split("/")
            node = self._root
            for segment in segments:
                node = node.children.setdefault(segment, _Node())
            if rest:
                partial[id(node)][rest] = indexes
                nodes[id(node)] = node
            else:
                node.here = _Slot(self._routes, indexes)
        for key, by_text in partial.items():
            node = nodes[key]
            node.partial = {t: _Slot(self._routes, v) for t, v in by_text.items()}
            node.partial_lengths = tuple(sorted({len(t) for t in by_text}))

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def match(self, method: str, host: str, path: str) -> Route | None:
        """The first route, in policy order, that accepts the request; None when none does.

        `path` is the request's match key (path_matching.match_key)."""
        routes = self._routes
        best = len(routes)
        slot = self._exact.get(path)
        if slot is not None:
            best = slot.first(routes, method, host, best)
        node: _Node | None = self._root
        pos = 1  # just after the leading '/'
        while node is not None:
            if node.here is not None:
                best = node.here.first(routes, method, host, best)
            end = path.find("/", pos)
            if node.partial_lengths:
                segment_end = len(path) if end < 0 else end
                for length in node.partial_lengths:
                    if pos + length > segment_end:
                        break
                    found = node.partial.get(path[pos:pos + length])
                    if found is not None:
                        best = found.first(routes, method, host, best)
            if end < 0:
                break
            node = node.children.get(path[pos:end])
            pos = end + 1
        return routes[best] if best < len(routes) else None

    def shadowed(self) -> list[tuple[Route, Route]]:
        """(route, earlier route) pairs where the earlier one catches every request of the later."""
        return shadowed_routes(self._routes)
