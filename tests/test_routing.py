"""Route table: first match wins over exact paths, prefixes, methods and hosts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing import Router, host_matches, request_host
from gateway.settings.policy import Route, RouteMatch


def route(name: str, **match) -> Route:
    if "methods" in match:
        match["methods"] = frozenset(match["methods"])
    return Route(name=name, match=RouteMatch(**match))


ROUTES = [
    route("health", path="/health"),
    route("login", path="/api/auth/login", methods=["POST"]),
    route("admin-host", path_prefix="/api/", host="admin.example.com"),
    route("tenant", path_prefix="/api/", host="*.tenants.example.com"),
    route("api", path_prefix="/api/"),
    route("everything", path_prefix="/"),
]
router = Router(ROUTES)


def name(method: str, host: str, path: str) -> str | None:
    r = router.match(method, host, path)
    return r.name if r else None


def test_exact_path_matches() -> None:
    assert name("GET", "x", "/health") == "health"


def test_exact_path_does_not_match_a_longer_path() -> None:
    assert name("GET", "x", "/health/deep") == "everything"


def test_method_restriction_falls_through_to_later_routes() -> None:
    assert name("POST", "x", "/api/auth/login") == "login"
    assert name("GET", "x", "/api/auth/login") == "api"


def test_host_restriction() -> None:
    assert name("GET", "admin.example.com", "/api/x") == "admin-host"
    assert name("GET", "other.example.com", "/api/x") == "api"


def test_wildcard_host_matches_subdomains_only() -> None:
    assert name("GET", "a.tenants.example.com", "/api/x") == "tenant"
    assert name("GET", "a.b.tenants.example.com", "/api/x") == "tenant"
    assert name("GET", "tenants.example.com", "/api/x") == "api"


def test_first_match_wins_even_when_a_later_route_is_more_specific() -> None:
    r = Router([route("broad", path_prefix="/"), route("narrow", path="/x")])
    assert r.match("GET", "h", "/x").name == "broad"


def test_prefix_is_a_string_prefix() -> None:
    r = Router([route("p", path_prefix="/api")])
    assert r.match("GET", "h", "/apix").name == "p"


def test_no_match_returns_none() -> None:
    r = Router([route("api", path_prefix="/api/")])
    assert r.match("GET", "h", "/other") is None


def test_route_without_path_matches_every_path() -> None:
    r = Router([route("posts", methods=["POST"]), route("rest", path_prefix="/")])
    assert r.match("POST", "h", "/anything").name == "posts"
    assert r.match("GET", "h", "/anything").name == "rest"


def test_shadowed_routes_are_reported() -> None:
    r = Router([route("all", path_prefix="/"), route("api", path_prefix="/api/"),
                route("posts", path="/p", methods=["POST"])])
    assert [(a.name, b.name) for a, b in r.shadowed()] == [("api", "all"), ("posts", "all")]


def test_method_restricted_route_does_not_shadow_an_unrestricted_one() -> None:
    r = Router([route("get", path_prefix="/", methods=["GET"]), route("all", path_prefix="/")])
    assert r.shadowed() == []


def test_request_host_strips_port_and_case() -> None:
    assert request_host("API.Example.com:8443") == "api.example.com"
    assert request_host("[::1]:8080") == "[::1]"
    assert request_host(None) == ""


def test_host_matches() -> None:
    assert host_matches("*.example.com", "a.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("*.example.com", "evilexample.com")
    assert host_matches(None, "anything")


def test_prefix_ending_inside_a_segment_is_a_string_prefix() -> None:
    r = Router([route("v", path_prefix="/api/v1/us"), route("rest", path_prefix="/")])
    assert r.match("GET", "h", "/api/v1/users").name == "v"
    assert r.match("GET", "h", "/api/v1/us").name == "v"
    assert r.match("GET", "h", "/api/v1/u").name == "rest"
    assert r.match("GET", "h", "/api/v2/users").name == "rest"


def test_prefix_with_trailing_slash_needs_the_slash() -> None:
    r = Router([route("api", path_prefix="/api/")])
    assert r.match("GET", "h", "/api/") is not None
    assert r.match("GET", "h", "/api") is None


def test_exact_host_index_keeps_policy_order_with_wildcards() -> None:
    r = Router([route("wild", path_prefix="/", host="*.example.com"),
                route("exact", path_prefix="/", host="a.example.com"),
                route("exact-first", path_prefix="/", host="b.example.com"),
                route("wild-later", path_prefix="/", host="*.example.com")])
    assert r.match("GET", "a.example.com", "/x").name == "wild"
    r2 = Router([route("exact", path_prefix="/", host="a.example.com", methods=["POST"]),
                 route("wild", path_prefix="/", host="*.example.com")])
    assert r2.match("POST", "a.example.com", "/x").name == "exact"
    assert r2.match("GET", "a.example.com", "/x").name == "wild"


# -- differential: the index must agree with a plain first-match scan ----------------------

def linear_match(routes: list[Route], method: str, host: str, path: str) -> Route | None:
    for r in routes:
        m = r.match
        if m.path is not None and m.path != path:
            continue
        if m.path is None and not path.startswith(m.path_prefix or "/"):
            continue
        if m.methods is not None and method not in m.methods:
            continue
        if not host_matches(m.host, host):
            continue
        return r
    return None


_segments = st.sampled_from(["a", "ab", "abc", "b", "v1", "x"])
_paths = st.lists(_segments, min_size=0, max_size=4).flatmap(
    lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"]))
_hosts = st.sampled_from(["a.example.com", "b.example.com", "example.com", "x.a.example.com"])


@st.composite
def _route_tables(draw) -> list[Route]:
    n = draw(st.integers(1, 12))
    routes = []
    for i in range(n):
        path = draw(_paths)
        kind = draw(st.sampled_from(["path", "prefix", "partial", "any"]))
        match: dict = {}
        if kind == "path":
            match["path"] = path
        elif kind == "prefix":
            match["path_prefix"] = path
        elif kind == "partial":
            match["path_prefix"] = path.rstrip("/") + "/" + draw(st.sampled_from(["a", "ab", "v"]))
        if draw(st.booleans()):
            match["methods"] = draw(st.sampled_from([["GET"], ["POST"], ["GET", "POST"]]))
        if draw(st.booleans()):
            match["host"] = draw(st.sampled_from(["a.example.com", "*.example.com",
                                                  "*.a.example.com", "b.example.com"]))
        routes.append(route(f"r{i}", **match))
    return routes


@settings(max_examples=300, deadline=None)
@given(_route_tables(), st.sampled_from(["GET", "POST", "PUT"]), _hosts, _paths)
def test_index_agrees_with_a_linear_first_match_scan(routes, method, host, path) -> None:
    assert Router(routes).match(method, host, path) == linear_match(routes, method, host, path)
