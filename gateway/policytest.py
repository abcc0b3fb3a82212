"""`gateway test`: declarative policy test cases, so a policy change can be checked in CI.

A cases file:

    cases:
      - name: login goes to the login route
        request: {method: POST, url: /api/auth/login, client_ip: 203.0.113.7,
                  headers: {X-Forwarded-For: 198.51.100.1}}
        expect:
          route: login            # a route name, or null for "no route"
          outcome: forward        # forward | websocket | an HTTP status the gateway answers
          path: /api/auth/login   # the normalized path
          client_ip: 203.0.113.7
          upstream_headers: {X-Forwarded-For: 203.0.113.7}   # these, at least
          rate_limits: [login, api, global]                    # checked, in this order
          cors: allowed           # allowed | refused | none (no policy, or no Origin)
          response_headers: {X-Frame-Options: DENY}   # set by the gateway; null: must not be

Each case runs through `explain`, i.e. the gateway's own decision code. Every `expect` key is
optional; a case checks what it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import DEFAULT_PEER
from gateway.compiled import CompiledPolicy
from gateway.config.errors import PolicyError
from gateway.config.reader import Reader
from gateway.config.source import compose_file
from gateway.explain import DescribedRequest, explain

EXPECT_KEYS = ("route", "outcome", "path", "client_ip", "upstream_headers", "rate_limits",
               "cors", "response_headers")


@dataclass(frozen=True)
class Case:
    name: str
    request: DescribedRequest
    expect: dict[str, Any] = field(default_factory=dict)


def load_cases(path: Path) -> list[Case]:
    """Cases from a file; raises PolicyError (FILE:LINE:COL) when the file is malformed."""
    root, _ = compose_file(path)
    r = Reader(str(path))
    cases: list[Case] = []
    if root is None:
        r.error(None, "cases file is empty")
        raise PolicyError(r.problems)
    top = r.mapping(root, ("cases",), "the cases file")
    items = r.sequence(top["cases"], "cases") if top and "cases" in top else None
    if top is not None and "cases" not in top:
        r.error(root, "missing required key 'cases'")
    for i, item in enumerate(items or ()):
        case = _case(r, item, f"cases[{i}]")
        if case is not None:
            cases.append(case)
    if r.problems:
        raise PolicyError(r.problems)
    return cases


def _case(r: Reader, node: yaml.Node, where: str) -> Case | None:
    m = r.mapping(node, ("name", "request", "expect"), where)
    if m is None:
        return None
    name = r.string(m["name"], f"{where}.name") if "name" in m else None
    if "name" not in m:
        r.error(node, f"{where} needs a 'name'")
    if "request" not in m:
        r.error(node, f"{where} needs a 'request'")
        return None
    req = r.mapping(m["request"], ("method", "url", "headers", "client_ip"), f"{where}.request")
    if req is None:
        return None
    method = r.string(req["method"], f"{where}.request.method") if "method" in req else "GET"
    url = r.string(req["url"], f"{where}.request.url") if "url" in req else None
    if "url" not in req:
        r.error(m["request"], f"{where}.request needs a 'url'")
    peer = r.string(req["client_ip"], f"{where}.request.client_ip") \
        if "client_ip" in req else DEFAULT_PEER
    headers: list[tuple[str, str]] = []
    if "headers" in req:
        hm = r.mapping(req["headers"], _any_key(req["headers"]), f"{where}.request.headers")
        for key, value in (hm or {}).items():
            text = r.string(value, f"{where}.request.headers.{key}")
            if text is not None:
                headers.append((key, text))
    expect: dict[str, Any] = {}
    if "expect" in m:
        em = r.mapping(m["expect"], EXPECT_KEYS, f"{where}.expect")
        for key, value in (em or {}).items():
            expect[key] = yaml.safe_load(yaml.serialize(value))
    if name is None or method is None or url is None or peer is None:
        return None
    return Case(name, DescribedRequest(method, url, tuple(headers), peer), expect)


def _any_key(node: yaml.Node) -> tuple[str, ...]:
    if isinstance(node, yaml.MappingNode):
        return tuple(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode))
    return ()


def _cors_word(outcome: str) -> str:
    if outcome in ("preflight allowed", "origin allowed"):
        return "allowed"
    if outcome == "preflight refused" or outcome.endswith("not allowed: no CORS headers"):
        return "refused"
    return "none"


def check_case(rt: CompiledPolicy, case: Case) -> list[str]:
    """What differs from the case's expectations (empty when the case passes)."""
    report = explain(rt, case.request)
    outcome = report["outcome"]
    actual = {
        "route": report["route"]["name"] if report["route"] else None,
        "outcome": outcome["status"] if outcome["action"] == "answer"
        else ("websocket" if outcome["action"] == "relay websocket" else "forward"),
        "path": report["path"],
        "client_ip": report["client_ip"]["address"],
        "rate_limits": [lim["name"] for lim in report.get("rate_limits", ())],
        "cors": _cors_word(report["cors"]["outcome"]),
    }
    failures = []
    for key, wanted in case.expect.items():
        if key == "response_headers":
            added = {k.lower(): v for k, v in report["response_headers"]["added"].items()}
            for name, value in (wanted or {}).items():
                if added.get(name.lower()) != (None if value is None else str(value)):
                    failures.append(f"response header {name}: expected {value!r}, "
                                    f"got {added.get(name.lower())!r}")
        elif key == "upstream_headers":
            sent: dict[str, str] = {}
            for k, v in report.get("upstream_request", {}).get("headers", ()):
                sent[k.lower()] = f"{sent[k.lower()]}, {v}" if k.lower() in sent else v
            for name, value in (wanted or {}).items():
                if sent.get(name.lower()) != str(value):
                    failures.append(f"upstream header {name}: expected {value!r}, "
                                    f"got {sent.get(name.lower())!r}")
        elif actual[key] != wanted:
            failures.append(f"{key}: expected {wanted!r}, got {actual[key]!r}")
    return failures
