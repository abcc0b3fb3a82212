"""Admission: every decision about a request that can be made from its head alone.

    target form -> path normalization -> method -> route -> upgrade -> body size -> Expect

A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) is routed by the
method it asks about, so it meets the same route, CORS policy and rate limits as the request
it prepares; when that route has a CORS policy the gateway answers it and never forwards it.

A pure function of the request head and the compiled policy, used by the request handler and,
unchanged, by `gateway explain` and `gateway test`, so what they report is what the gateway
does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDictProxy

from gateway.config.model import Route
from gateway.cors import is_preflight
from gateway.http.forwarding import connection_listed
from gateway.http.normalize import PathRejected, normalize_target
from gateway.routing import request_host

if TYPE_CHECKING:  # runtime.py imports this module
    from gateway.runtime import Runtime

# CONNECT would make the gateway a tunnel; TRACE/TRACK echo credentials (cross-site tracing).
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """The gateway answers the request itself."""

    status: int
    detail: str
    close: bool = False  # the rest of the request cannot be trusted or read
    route: Route | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The request goes upstream on `route`, with exactly this path."""

    route: Route
    path: str
    query: str | None
    websocket: bool
    send_continue: bool  # answer `Expect: 100-continue` before reading the body
    preflight: bool = False  # a CORS preflight: answered by the gateway

    @property
    def path_qs(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


@dataclass(frozen=True, slots=True)
class CspReport:
    """A POST to the CSP report collector: the gateway reads and logs it."""

    route: None = None
    path: str = ""


COLLECTOR = "(csp-reports)"  # its key in Runtime.route_limits; no route can have this name


def admit(
    rt: Runtime,
    method: str,
    target: str,
    headers: CIMultiDictProxy[str],
    content_length: int | None,
    has_body: bool,
) -> Admission | Refusal | CspReport:
    try:
        path, query = normalize_target(target)
    except PathRejected as exc:
        return Refusal(400, str(exc), close=True)
    collector = rt.policy.csp_reports
    if collector is not None and path == collector.path:
        if method != "POST":
            return Refusal(405, "the CSP report collector takes POST", path=path)
        if content_length is None or content_length > collector.max_size:
            return Refusal(413, f"CSP reports need a Content-Length of at most "
                           f"{collector.max_size} bytes", close=True, path=path)
        return CspReport(path=path)
    if method in REFUSED_METHODS:
        return Refusal(405, f"{method} is not allowed through this gateway", path=path)
    host = request_host(headers.get("Host"))
    if is_preflight(method, headers):
        route = rt.router.match(headers["Access-Control-Request-Method"], host, path)
        if route is not None and route.cors is not None:
            return Admission(route, path, query, False, False, preflight=True)
        # no CORS policy there: an ordinary OPTIONS request, which the upstream may answer
    route = rt.router.match(method, host, path)
    if route is None:
        return Refusal(404, "no route matches this request", path=path)

    websocket = False
    if "Upgrade" in headers:
        wants_ws = (headers["Upgrade"].strip().lower() == "websocket"
                    and "upgrade" in connection_listed(headers))
        if wants_ws and method == "GET":
            if not route.websocket:
                return Refusal(403, "WebSocket upgrade is not allowed on this route",
                               route=route, path=path)
            websocket = True
        # any other upgrade (h2c, ...) is hop-by-hop and is not forwarded

    max_body = rt.policy.server.limits.max_body_size
    if content_length is not None and content_length > max_body:
        return Refusal(413, f"request body exceeds {max_body} bytes", close=True, route=route,
                       path=path)
    send_continue = False
    expect = headers.get("Expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            return Refusal(417, "only 'Expect: 100-continue' is supported", route=route,
                           path=path)
        send_continue = has_body
    return Admission(route, path, query, websocket, send_continue)
