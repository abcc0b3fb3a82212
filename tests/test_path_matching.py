"""Path matching as the upstream reads paths, and the route table built with it."""

from __future__ import annotations

import pytest

from gateway.http.normalize import PathRejected, normalize_path
from gateway.http.path_matching import match_key
from gateway.routing import Router, request_host
from gateway.settings.path_matching import DEFAULT, PathMatching
from gateway.settings.policy import Route, RouteMatch

LOOSE = PathMatching(case_sensitive=False, trailing_slash="ignore")
ROUTES = (
    Route("login", RouteMatch(path="/api/auth/login", methods=frozenset({"POST"}))),
    Route("api", RouteMatch(path_prefix="/api/")),
    Route("rest", RouteMatch(path_prefix="/")),
)


def route_of(path: str, matching: PathMatching) -> str | None:
    found = Router(ROUTES, matching).match("POST", "", match_key(normalize_path(path), matching))
    return found.name if found else None


@pytest.mark.parametrize("spelling", ["/api/auth/login", "/api/auth/login/", "/API/AUTH/LOGIN",
                                      "/Api/Auth/Login/", "/api//auth/./login",
                                      "/%61pi/auth/login"])
def test_every_spelling_of_login_meets_the_login_route_when_matching_is_loose(
        spelling: str) -> None:
    assert route_of(spelling, LOOSE) == "login"


def test_by_default_case_and_trailing_slash_are_significant() -> None:
    assert route_of("/api/auth/login/", DEFAULT) == "api"
    assert route_of("/API/AUTH/LOGIN", DEFAULT) == "rest"


@pytest.mark.parametrize("path", ["/api/auth/login;jsessionid=x", "/api;x/auth/login",
                                  "/api/auth/login.", "/api/auth./login", "/api/auth/login..."])
def test_parameters_and_trailing_dots_are_refused_by_default(path: str) -> None:
    with pytest.raises(PathRejected):
        match_key(path, DEFAULT)


def test_strip_matches_as_the_servlet_container_or_iis_reads_the_path() -> None:
    strip = PathMatching(path_parameters="strip", trailing_dots="strip")
    assert match_key("/api/auth/login;jsessionid=x", strip) == "/api/auth/login"
    assert match_key("/a;x=1/b;y/c", strip) == "/a/b/c"
    assert match_key("/api/auth/login.", strip) == "/api/auth/login"
    assert route_of("/api/auth/login;jsessionid=x", strip) == "login"


def test_literal_keeps_the_characters() -> None:
    literal = PathMatching(path_parameters="literal", trailing_dots="literal")
    assert match_key("/a;b/c.", literal) == "/a;b/c."


def test_a_dot_inside_a_segment_is_not_a_trailing_dot() -> None:
    assert match_key("/files/report.pdf", DEFAULT) == "/files/report.pdf"
    assert match_key("/v1.2/x", DEFAULT) == "/v1.2/x"


def test_root_has_no_slash_twin() -> None:
    router = Router((Route("root", RouteMatch(path="/")),), LOOSE)
    assert router.match("GET", "", "/").name == "root"
    assert router.match("GET", "", "") is None


@pytest.mark.parametrize("header,host", [("api.example.com.", "api.example.com"),
                                         ("API.EXAMPLE.COM", "api.example.com"),
                                         ("api.example.com.:443", "api.example.com"),
                                         ("api.example.com:80", "api.example.com"),
                                         ("[::1]:8080", "[::1]")])
def test_hosts_are_compared_without_case_port_or_trailing_dot(header: str, host: str) -> None:
    assert request_host(header) == host
