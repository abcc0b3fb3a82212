"""`gateway explain`: what the gateway would do with one request, and why.

Runs the same admission, client-IP, rate-limit key and header-rewriting code as the request
handler against a described request (nothing is sent anywhere, no counter is touched) and
reports the outcome as data; `format_report` renders it for people, `--json` prints the data
for tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.admission import Admission, CspReport, admit
from gateway.compiled import CompiledPolicy
from gateway.cors import actual as actual_cors
from gateway.cors import preflight as cors_preflight
from gateway.http.client_ip import client_ip, forwarded_hops, parse_ip
from gateway.http.forwarding import HOP_BY_HOP, upstream_request_headers
from gateway.http.normalize import PathRejected
from gateway.http.path_matching import match_key
from gateway.ratelimit.keys import limit_tag, storage_key
from gateway.settings.cors import CorsPolicy
from gateway.settings.headers import HeadersPolicy
from gateway.settings.policy import Route, RouteMatch
from gateway.settings.ratelimit import RedisSettings

DEFAULT_PEER = "192.0.2.10"  # a documentation address: "some client on the internet"
REQUEST_ID = "(generated)"


@dataclass(frozen=True)
class DescribedRequest:
    method: str
    url: str  # a path (/api/x?y) or an absolute URL (https://host/api/x)
    headers: Sequence[tuple[str, str]] = ()
    peer: str = DEFAULT_PEER  # the TCP peer the request arrives from


def split_url(url: str) -> tuple[str, str | None, str]:
    """(scheme, host or None, request target) without normalizing anything."""
    for scheme in ("http", "https"):
        prefix = f"{scheme}://"
        if url.lower().startswith(prefix):
            rest = url[len(prefix):]
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            target = rest[cut:] or "/"
            return scheme, rest[:cut], target if target.startswith("/") else "/" + target
    return "http", None, url


def describe_match(match: RouteMatch) -> list[str]:
    out = []
    if match.path is not None:
        out.append(f"path is exactly {match.path}")
    elif match.path_prefix:
        out.append(f"path starts with {match.path_prefix}")
    else:
        out.append("any path")
    out.append("method in " + ", ".join(sorted(match.methods)) if match.methods else "any method")
    out.append(f"host is {match.host}" if match.host else "any host")
    return out


def explain(rt: CompiledPolicy, req: DescribedRequest) -> dict[str, Any]:
    scheme, url_host, target = split_url(req.url)
    incoming = CIMultiDict(req.headers)
    if url_host is not None and "Host" not in incoming:
        incoming["Host"] = url_host
    headers = CIMultiDictProxy(incoming)
    length_text = headers.get("Content-Length")
    length = int(length_text) if length_text and length_text.isascii() \
        and length_text.isdigit() else None
    has_body = length not in (None, 0) or "chunked" in headers.get("Transfer-Encoding", "")

    peer_ip = parse_ip(req.peer)
    peer_trusted = bool(rt.trusted) and rt.trusted.trusts(peer_ip)
    xff = headers.getall("X-Forwarded-For", ())
    client = client_ip(req.peer, xff, rt.trusted)
    if not peer_trusted:
        why_ip = f"peer {req.peer} is not a trusted proxy, so forwarding headers are ignored"
    elif not forwarded_hops(xff):
        why_ip = f"peer {req.peer} is a trusted proxy but sent no X-Forwarded-For"
    else:
        why_ip = (f"peer {req.peer} is a trusted proxy; X-Forwarded-For walked right to left, "
                  "skipping trusted hops")

    report: dict[str, Any] = {
        "request": {"method": req.method, "target": target, "host": headers.get("Host"),
                    "scheme": scheme, "peer": req.peer},
        "client_ip": {"address": client, "why": why_ip},
    }
    verdict = admit(rt, req.method, target, headers, length, has_body)
    if verdict.path is not None:
        report["path_matching"] = _matching(rt, verdict.path)
    report["path"] = verdict.path
    report["route"] = _route(verdict.route)
    route = verdict.route
    cors_policy = rt.route_cors.get(route.name) if route else rt.default_cors
    headers_policy = rt.route_headers.get(route.name) if route else rt.default_headers
    https = scheme == "https" or (peer_trusted and
                                  headers.get("X-Forwarded-Proto", "").lower() == "https")
    report["cors"] = _cors(cors_policy, headers, preflight=getattr(verdict, "preflight", False))
    report["response_headers"] = _security(headers_policy, https)
    if isinstance(verdict, CspReport):
        report["outcome"] = {"action": "answer", "status": 204,
                             "detail": "the CSP report collector logs and counts the report"}
        return report
    if not isinstance(verdict, Admission):
        report["outcome"] = {"action": "answer", "status": verdict.status,
                             "detail": verdict.detail}
        return report

    report["query"] = verdict.query
    report["counters"] = _counters(rt.policy.redis)
    # a preflight spends no quota; an exempt client is not counted by that limit
    report["rate_limits"] = [] if verdict.preflight \
        else _limits(rt, verdict.route.name, client, headers)
    report["exempt_from"] = [] if verdict.preflight \
        else _exempt(rt, verdict.route.name, client)
    if verdict.preflight:
        allowed = report["cors"]["outcome"] == "preflight allowed"
        report["outcome"] = {"action": "answer", "status": 204 if allowed else 403,
                             "detail": "CORS preflight, answered by the gateway"}
        return report
    target_url = rt.policy.upstream.targets[0]
    out = upstream_request_headers(
        headers, version=(1, 1), peer=req.peer, peer_trusted=peer_trusted, client_ip=client,
        scheme=scheme, request_id=REQUEST_ID,
        upstream_authority=None if rt.policy.upstream.preserve_host else target_url.authority,
        rules=rt.forwarding)
    sent = {k.lower(): v for k, v in out.items()}
    report["outcome"] = {
        "action": "relay websocket" if verdict.websocket else "forward",
        "upstream": target_url.base_url + verdict.path_qs,
        "continue": verdict.send_continue,
    }
    report["upstream_request"] = {
        "set": {k: v for k, v in out.items() if headers.get(k) != v},
        "removed": sorted({k for k in headers if k.lower() not in sent}),
    }
    report["response_headers"]["removed"] += [
        *sorted(n.title() for n in HOP_BY_HOP), "(any named in Connection)"]
    return report


def _matching(rt: CompiledPolicy, path: str) -> dict[str, Any]:
    m = rt.path_matching
    try:
        key = match_key(path, m)
    except PathRejected as exc:
        key = f"refused: {exc}"
    return {"routes_match": key, "case_sensitive": m.case_sensitive,
            "trailing_slash": m.trailing_slash, "path_parameters": m.path_parameters,
            "trailing_dots": m.trailing_dots}


def _cors(policy: CorsPolicy | None, headers: CIMultiDictProxy[str],
          preflight: bool) -> dict[str, Any]:
    if policy is None:
        return {"policy": None, "outcome": "no CORS policy on this route"}
    origin = headers.get("Origin")
    if origin is None:
        return {"policy": policy.name, "outcome": "no Origin: not a cross-origin request"}
    if preflight:
        answer = cors_preflight(policy, headers)
        if answer.allowed:
            return {"policy": policy.name, "outcome": "preflight allowed",
                    "headers": dict(answer.headers)}
        return {"policy": policy.name, "outcome": "preflight refused", "reason": answer.reason}
    added = actual_cors(policy, headers)
    if added:
        return {"policy": policy.name, "outcome": "origin allowed", "headers": dict(added)}
    return {"policy": policy.name, "outcome": f"origin {origin!r} not allowed: no CORS headers"}


def _security(policy: HeadersPolicy | None, https: bool) -> dict[str, Any]:
    added: dict[str, str] = {"Via": "1.1 gateway", "X-Request-ID": REQUEST_ID}
    if policy is None:
        return {"policy": None, "added": added, "if_missing": {}, "removed": []}
    added.update(policy.set)
    if https and policy.hsts:
        added["Strict-Transport-Security"] = policy.hsts
    return {"policy": policy.name, "added": added, "if_missing": dict(policy.set_if_missing),
            "removed": list(policy.remove)}


def _limits(rt: CompiledPolicy, route: str, client: str,
            headers: CIMultiDictProxy[str]) -> list[dict[str, Any]]:
    route_limits = rt.route_limits.get(route)
    out = []
    for p in route_limits.applying_to(client) if route_limits else ():
        tag, note = limit_tag(p, client, headers)
        out.append({"name": p.name, "limit": p.limit, "per_ms": p.period_ms,
                    "algorithm": p.algorithm, "mode": p.mode,
                    "key": storage_key(rt.policy.redis.key_prefix, p, tag),
                    "note": note})
    return out


def _counters(redis: RedisSettings) -> str:
    """Where the limits are counted, and what applies while Redis is away."""
    if not redis.url:
        return "in this process only (no redis.url)"
    if redis.failure_mode == "closed":
        return "in Redis; while Redis is away limited routes answer 503 (failure_mode closed)"
    if redis.fallback == "divide":
        return ("in Redis; while Redis is away each of N replicas (counted by their "
                "heartbeats in Redis) enforces ceil(limit / N) in-process (fallback divide)")
    return "in Redis; while Redis is away each replica enforces the whole limits in-process"


def _exempt(rt: CompiledPolicy, route: str, client: str) -> list[str]:
    route_limits = rt.route_limits.get(route)
    if route_limits is None:
        return []
    applying = route_limits.applying_to(client)
    return [p.name for p in route_limits.policies if p not in applying]


def _route(route: Route | None) -> dict[str, Any] | None:
    if route is None:
        return None
    return {"name": route.name, "matched_because": describe_match(route.match),
            "websocket": route.websocket}


def format_report(report: dict[str, Any]) -> str:
    req = report["request"]
    lines = [f"{req['method']} {req['target']}  (host {req['host'] or '-'}, "
             f"peer {req['peer']}, {req['scheme']})"]
    lines.append(f"  normalized path: {report['path'] or '(rejected)'}")
    matching = report.get("path_matching")
    if matching is not None and matching["routes_match"] != report["path"]:
        lines.append(f"  routes match:    {matching['routes_match']}  (server.path_matching)")
    ip = report["client_ip"]
    lines.append(f"  client ip:       {ip['address']}  ({ip['why']})")
    route = report["route"]
    if route is None:
        lines.append("  route:           none")
    else:
        lines.append(f"  route:           {route['name']}  ("
                     + "; ".join(route["matched_because"]) + ")")
    for lim in report.get("rate_limits", ()):
        note = f"; {lim['note']}" if lim["note"] else ""
        shadow = " (shadow)" if lim["mode"] == "shadow" else ""
        lines.append(f"  rate limit:      {lim['name']}{shadow}: {lim['limit']} per "
                     f"{lim['per_ms'] / 1000:g}s, {lim['algorithm']}, key {lim['key']}{note}")
    if report.get("rate_limits"):
        lines.append(f"  counted:         {report['counters']}")
    for name in report.get("exempt_from", ()):
        lines.append(f"  rate limit:      {name}: not counted (client in its exempt ranges)")
    outcome = report["outcome"]
    if outcome["action"] == "answer":
        lines.append(f"  outcome:         the gateway answers {outcome['status']}: "
                     f"{outcome['detail']}")
    else:
        extra = ", after 100 Continue" if outcome["continue"] else ""
        lines.append(f"  outcome:         {outcome['action']} to {outcome['upstream']}{extra}")
        up = report["upstream_request"]
        for name, value in up["set"].items():
            lines.append(f"  upstream header: {name}: {value}")
        if up["removed"]:
            lines.append("  not forwarded:   " + ", ".join(up["removed"]))
    cors = report["cors"]
    lines.append(f"  cors:            {cors['outcome']}"
                 + (f" (policy {cors['policy']})" if cors["policy"] else "")
                 + (f": {cors['reason']}" if "reason" in cors else ""))
    for name, value in cors.get("headers", {}).items():
        lines.append(f"  cors header:     {name}: {value}")
    resp = report["response_headers"]
    for name, value in resp["added"].items():
        lines.append(f"  response adds:   {name}: {value}")
    for name, value in resp["if_missing"].items():
        lines.append(f"  unless present:  {name}: {value}")
    if resp["removed"]:
        lines.append("  response drops:  " + ", ".join(resp["removed"]))
    return "\n".join(lines)
