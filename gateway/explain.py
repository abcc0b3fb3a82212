"""`gateway explain`: what the gateway would do with one request, and why.

Makes the same plan as the request handler (gateway/plan.py) for a described request (nothing
is sent anywhere, no counter is touched) and reports it as data; `format_report` renders it
for people, `--json` prints the data for tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway import DEFAULT_PEER
from gateway.admission import Admission, Refusal
from gateway.compiled import CompiledPolicy
from gateway.http.forwarding import HOP_BY_HOP, via
from gateway.http.normalize import PathRejected
from gateway.http.path_matching import match_key
from gateway.plan import Action, CorsOutcome, Head, IpSource, Plan, UpstreamHost, peer_trusted, plan
from gateway.settings.policy import Route, RouteMatch
from gateway.settings.ratelimit import RedisSettings

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
    """The plan the gateway makes for `req` (gateway/plan.py), as a report."""
    scheme, url_host, target = split_url(req.url)
    incoming = CIMultiDict(req.headers)
    if url_host is not None and "Host" not in incoming:
        incoming["Host"] = url_host
    headers = CIMultiDictProxy(incoming)
    length_text = headers.get("Content-Length")
    length = int(length_text) if length_text and length_text.isascii() \
        and length_text.isdigit() else None
    has_body = length not in (None, 0) or "chunked" in headers.get("Transfer-Encoding", "")
    head = Head(req.method, target, headers, req.peer, secure=scheme == "https",
                content_length=length, has_body=has_body)
    the_plan = plan(rt, head, trusted_peer=peer_trusted(rt, req.peer), request_id=REQUEST_ID)
    verdict = the_plan.verdict

    report: dict[str, Any] = {
        "request": {"method": req.method, "target": target, "host": headers.get("Host"),
                    "scheme": scheme, "peer": req.peer},
        "client_ip": {"address": the_plan.client_ip, "source": the_plan.ip_source.value,
                      "why": _WHY_IP[the_plan.ip_source].format(peer=req.peer)},
    }
    if verdict.path is not None:
        report["path_matching"] = _matching(rt, verdict.path)
    report["path"] = verdict.path
    report["route"] = _route(verdict.route)
    report["access"] = {"outcome": the_plan.access.value, "list": the_plan.access_list}
    identity = the_plan.identity
    report["bearer_token"] = {"outcome": identity.outcome.value, "reason": identity.reason,
                              "subject": (identity.claims or {}).get("sub")}
    report["cors"] = _cors(the_plan)
    report["response_headers"] = _security(the_plan)
    action = the_plan.action
    if action is Action.ANSWER:
        assert isinstance(verdict, Refusal)
        report["outcome"] = {"action": action.value, "status": verdict.status,
                             "detail": verdict.detail}
        return report
    if isinstance(verdict, Admission):
        report["query"] = verdict.query
        report["upstream_path"] = verdict.upstream_path or verdict.path
    report["counters"] = _counters(rt.policy.redis)
    report["rate_limits"] = [
        {"name": c.policy.name, "limit": c.policy.limit, "per_ms": c.policy.period_ms,
         "algorithm": c.policy.algorithm, "mode": c.policy.mode, "key": c.key,
         "note": c.note} for c in the_plan.limit_checks(rt)]
    report["exempt_from"] = list(the_plan.exempt_from)
    if action is Action.COLLECT_CSP_REPORT:
        report["outcome"] = {"action": "answer", "status": 204,
                             "detail": "the CSP report collector logs and counts the report"}
        return report
    if action is Action.PREFLIGHT:
        allowed = the_plan.cors is CorsOutcome.PREFLIGHT_ALLOWED
        report["outcome"] = {"action": "answer", "status": 204 if allowed else 403,
                             "detail": "CORS preflight, answered by the gateway"}
        return report
    assert isinstance(verdict, Admission)
    upstream = rt.policy.upstreams.get(the_plan.upstream, rt.policy.upstream)
    targets = upstream.targets
    out = the_plan.upstream_headers(rt)
    if the_plan.upstream_host is UpstreamHost.TARGET:
        out["Host"] = targets[0].authority if len(targets) == 1 else \
            "(the chosen target's authority: " + ", ".join(t.authority for t in targets) + ")"
    sent = {k.lower(): v for k, v in out.items()}
    report["outcome"] = {
        "action": action.value,
        "upstream_name": the_plan.upstream,
        "targets": [t.base_url for t in targets],
        "balance": upstream.balance,
        "upstream": targets[0].base_url + verdict.path_qs,
        "continue": verdict.send_continue,
    }
    # a name whose values differ from the client's is listed with all the values it goes with
    changed = {k.lower() for k in out if out.getall(k) != headers.getall(k, [])}
    report["upstream_request"] = {
        "headers": [[k, v] for k, v in out.items()],
        "set": [[k, v] for k, v in out.items() if k.lower() in changed],
        "removed": sorted({k for k in headers if k.lower() not in sent}),
    }
    if action is Action.FORWARD:
        report["response_headers"]["removed"] += [
            *sorted(n.title() for n in HOP_BY_HOP), "(any named in Connection)"]
    return report


_WHY_IP = {
    IpSource.PEER: "peer {peer} is not a trusted proxy, so forwarding headers are ignored",
    IpSource.TRUSTED_PEER: "peer {peer} is a trusted proxy but sent no X-Forwarded-For",
    IpSource.FORWARDED_FOR: "peer {peer} is a trusted proxy; X-Forwarded-For walked right to "
                            "left, skipping trusted hops",
}


def _matching(rt: CompiledPolicy, path: str) -> dict[str, Any]:
    m = rt.path_matching
    try:
        key = match_key(path, m)
    except PathRejected as exc:
        key = f"refused: {exc}"
    return {"routes_match": key, "case_sensitive": m.case_sensitive,
            "trailing_slash": m.trailing_slash, "path_parameters": m.path_parameters,
            "trailing_dots": m.trailing_dots}


def _cors(the_plan: Plan) -> dict[str, Any]:
    policy = the_plan.cors_policy
    outcome = the_plan.cors
    if policy is None:
        return {"policy": None, "outcome": "no CORS policy on this route"}
    if outcome is CorsOutcome.NOT_CROSS_ORIGIN:
        return {"policy": policy.name, "outcome": "no Origin: not a cross-origin request"}
    if outcome is CorsOutcome.PREFLIGHT_REFUSED:
        return {"policy": policy.name, "outcome": "preflight refused",
                "reason": the_plan.cors_reason}
    if outcome is CorsOutcome.ORIGIN_NOT_ALLOWED:
        origin = the_plan.head.headers.get("Origin")
        return {"policy": policy.name, "outcome": f"origin {origin!r} not allowed: no CORS "
                "headers"}
    return {"policy": policy.name, "outcome": outcome.value,
            "headers": dict(the_plan.cors_headers)}


def _security(the_plan: Plan) -> dict[str, Any]:
    added: dict[str, str] = {"X-Request-ID": REQUEST_ID}
    if the_plan.action is Action.FORWARD:  # the gateway's own answers carry no Via
        added["Via"] = via(the_plan.head.version)
    policy = the_plan.headers_policy
    if policy is None:
        return {"policy": None, "added": added, "if_missing": {}, "removed": []}
    added.update(policy.set)
    if the_plan.https and policy.hsts:
        added["Strict-Transport-Security"] = policy.hsts
    return {"policy": policy.name, "added": added, "if_missing": dict(policy.set_if_missing),
            "removed": list(policy.remove)}


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
    if report.get("upstream_path", report["path"]) != report["path"]:
        lines.append(f"  rewritten to:    {report['upstream_path']}  (the route's rewrite)")
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
    token = report["bearer_token"]
    if token["outcome"] != "not needed":
        lines.append(f"  bearer token:    {token['outcome']}"
                     + (f" (sub {token['subject']})" if token["subject"] is not None else "")
                     + (f": {token['reason']}" if token["reason"] else ""))
    access = report["access"]
    if access["list"] is not None:
        lines.append(f"  access:          {access['outcome']} (list {access['list']})")
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
        if len(outcome["targets"]) > 1 or outcome["upstream_name"] != "default":
            lines.append(f"  upstream:        {outcome['upstream_name']}: "
                         + ", ".join(outcome["targets"])
                         + (f" ({outcome['balance']})" if len(outcome["targets"]) > 1 else ""))
        up = report["upstream_request"]
        for name, value in up["set"]:
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
