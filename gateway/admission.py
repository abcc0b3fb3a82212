"""Admission: every decision about a request that can be made from its head alone.

    HTTP version -> transfer coding -> target form -> path normalization -> path matching
    -> method -> route -> upgrade (and its handshake) -> body size -> Expect

A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) is routed by the
method it asks about, so it meets the same route, CORS policy and rate limits as the request
it prepares; when that route has a CORS policy the gateway answers it and never forwards it.

A pure function of the request head and the compiled policy, used by the request handler and,
unchanged, by `gateway explain` and `gateway test`, so what they report is what the gateway
does.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.compiled import CompiledPolicy
from gateway.cors import is_preflight
from gateway.http.forwarding import connection_listed
from gateway.http.normalize import PathRejected, normalize_target
from gateway.http.path_matching import match_key
from gateway.routing import request_host
from gateway.settings.policy import Route
from gateway.tokens import REFUSED_METHODS

# RFC 9110 7.2 / RFC 3986 3.2: a reg-name or IP literal, an optional port; an empty Host is
# allowed (HTTP/1.0). Userinfo, a path, spaces or raw non-ASCII are refused, never routed.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~\-]*)(?::(?:[0-9]{1,5})?)?")



@dataclass(frozen=True, slots=True)
class Refusal:
    """The gateway answers the request itself."""

    status: int
    detail: str
    close: bool = False  # the rest of the request cannot be trusted or read
    route: Route | None = None
    path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # added to the answer (426's version)


@dataclass(frozen=True, slots=True)
class Admission:
    """The request goes upstream on `route`, with exactly this path."""

    route: Route
    path: str
    query: str | None
    websocket: bool
    send_continue: bool  # answer `Expect: 100-continue` before reading the body
    preflight: bool = False  # a CORS preflight: answered by the gateway
    upstream_path: str | None = None  # the route's rewrite of `path` (plan.py), if any

    @property
    def path_qs(self) -> str:
        """What the upstream receives as its request target."""
        path = self.path if self.upstream_path is None else self.upstream_path
        return path if self.query is None else f"{path}?{self.query}"


@dataclass(frozen=True, slots=True)
class CspReport:
    """A POST to the CSP report collector: the gateway reads and logs it."""

    route: None = None
    path: str = ""




def admit(
    rt: CompiledPolicy,
    method: str,
    target: str,
    headers: CIMultiDictProxy[str],
    content_length: int | None,
    has_body: bool,
    version: tuple[int, int] = (1, 1),
) -> Admission | Refusal | CspReport:
    if version != (1, 1) and version != (1, 0):
        if version[0] == 0:  # a request line without a version (HTTP/0.9's shape)
            return Refusal(400, "the request line has no HTTP version", close=True)
        return Refusal(505, f"HTTP/{version[0]}.{version[1]} is not supported; "
                       "use HTTP/1.1", close=True)
    if "Transfer-Encoding" in headers:
        refused = _transfer_coding_refused(headers.getall("Transfer-Encoding"))
        if refused is not None:
            return Refusal(501, refused, close=True)
    try:
        path, query = normalize_target(target)
        route_path = match_key(path, rt.path_matching)
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
        # After a CONNECT head, llhttp reads what follows as tunnel data, not as the body its
        # Content-Length announces: kept open, the connection would take a "body" for the
        # next request (a smuggled request). So a refused CONNECT ends the connection.
        return Refusal(405, f"{method} is not allowed through this gateway",
                       close=method == "CONNECT", path=path)
    host_header = headers.get("Host")
    if host_header is not None and not _HOST.fullmatch(host_header):
        return Refusal(400, "the Host header is not a host name or address with an optional "
                       "port", close=True, path=path)
    host = request_host(host_header)
    if is_preflight(method, headers):
        route = rt.router.match(headers["Access-Control-Request-Method"], host, route_path)
        if route is not None and route.cors is not None:
            return Admission(route, path, query, False, False, preflight=True)
        # no CORS policy there: an ordinary OPTIONS request, which the upstream may answer
    route = rt.router.match(method, host, route_path)
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
            refused = _handshake_refused(headers, version)
            if refused is not None:
                return Refusal(refused[0], refused[1], route=route, path=path,
                               headers=refused[2])
            # CORS does not apply to WebSockets, and browsers send cookies with the
            # handshake: a route's allowed origins are its WebSocket origins too
            # (cross-site WebSocket hijacking). Clients that send no Origin are not browsers.
            cors = rt.route_cors.get(route.name)
            origins = headers.getall("Origin", ())
            if cors is not None and origins and (
                    len(origins) > 1 or not cors.allows_origin(origins[0])):
                return Refusal(403, "WebSocket handshake from an origin this route does not "
                               "allow", route=route, path=path)
            websocket = True
        # any other upgrade (h2c, ...) is hop-by-hop and is not forwarded

    max_body = rt.policy.server.limits.max_body_size
    if content_length is not None and content_length > max_body:
        return Refusal(413, f"request body exceeds {max_body} bytes", close=True, route=route,
                       path=path)
    send_continue = False
    if "Expect" in headers:
        # every field line counts: `100-continue` on one and `foo` on another is not 100-continue
        expectations = [e.strip().lower() for line in headers.getall("Expect")
                        for e in line.split(",")]
        if expectations != ["100-continue"]:
            return Refusal(417, "only 'Expect: 100-continue' is supported", route=route,
                           path=path)
        send_continue = has_body
    return Admission(route, path, query, websocket, send_continue)


def _transfer_coding_refused(lines: list[str]) -> str | None:
    """Why a Transfer-Encoding is refused, or None for a lone `chunked`.

    Any other coding (`gzip, chunked`, `identity, chunked`) is one the upstream might frame
    differently from the gateway; nginx answers 501 as well.
    """
    codings = [c.strip().lower() for line in lines for c in line.split(",")]
    if codings == ["chunked"]:
        return None
    return ("transfer coding not supported: only a lone 'chunked' is accepted, got "
            f"{', '.join(codings)!r}")


_WS_VERSION = (("Sec-WebSocket-Version", "13"),)


def _handshake_refused(headers: CIMultiDictProxy[str],
                       version: tuple[int, int]) -> tuple[int, str, tuple] | None:
    """RFC 6455 4.2.1, checked here so a bad handshake gets the gateway's own answer."""
    if version != (1, 1):
        return 400, "a WebSocket handshake needs HTTP/1.1", ()
    versions = headers.getall("Sec-WebSocket-Version", ())
    if [v.strip() for v in versions] != ["13"]:
        return 426, "unsupported WebSocket version: this gateway speaks version 13", _WS_VERSION
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1:
        return 400, "a WebSocket handshake needs exactly one Sec-WebSocket-Key", ()
    try:
        nonce = binascii.a2b_base64(keys[0].strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        nonce = b""
    if len(nonce) != 16:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64", ()
    return None
