"""Several upstreams (`upstreams`, a route's `upstream`): the policy's errors, routes reaching
their own upstream, round robin within 10%, least connections, and a killed target ejected
(passive), marked down and readmitted by active health checks, with no client error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.compiled import CompiledPolicy
from gateway.config import load_policy
from gateway.explain import DescribedRequest, explain
from tests.support.client import request
from tests.support.metrics import value
from tests.support.policy import problems, write_policy
from tests.support.processes import start_gateway, stop, wait_until
from tests.support.recorder import start_recorder

BASE = """\
version: 1
"""


def test_upstream_errors_are_reported_at_their_node(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + """\
upstream: {url: "http://127.0.0.1:9"}
upstreams:
  default: {url: "http://127.0.0.1:10"}
  orders: {targets: ["http://127.0.0.1:11"], balance: random, health: {interval: 1s}}
  Bad: {url: "http://127.0.0.1:12"}
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: nowhere}
  - {name: b, match: {path_prefix: /}}
""")
    assert problems(path) == [
        f"{path}:4:12: upstreams.default is the top-level 'upstream'; name this one "
        "otherwise, or drop 'upstream'",
        f"{path}:5:55: upstreams.orders.balance must be round_robin or least_connections; "
        "got 'random'",
        f"{path}:5:71: upstreams.orders.health needs a 'path' to GET (e.g. /health)",
        f"{path}:6:8: upstream name 'Bad' must be lower-case letters, digits, '-' or '_'",
        f"{path}:8:52: routes[0].upstream: unknown upstream 'nowhere' (defined: default, "
        "orders, Bad)",
    ]


def test_named_upstreams_alone_need_every_route_to_name_one(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + """\
upstreams:
  orders: {url: "http://127.0.0.1:11"}
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: orders}
  - {name: b, match: {path_prefix: /}}
""")
    assert problems(path) == [
        f"{path}:6:5: routes[1].upstream: unknown upstream 'default' (defined: orders)"]


def test_explain_names_the_upstream_and_its_targets(tmp_path: Path) -> None:
    compiled = CompiledPolicy.build(load_policy(write_policy(tmp_path, BASE + """\
upstream: {url: "http://127.0.0.1:9"}
upstreams:
  orders: {targets: ["http://10.0.0.5:8000", "http://10.0.0.6:8000"],
           balance: least_connections}
routes:
  - {name: orders, match: {path_prefix: /orders/}, upstream: orders}
  - {name: rest, match: {path_prefix: /}}
""")))
    outcome = explain(compiled, DescribedRequest("GET", "/orders/1"))["outcome"]
    assert (outcome["upstream_name"], outcome["targets"], outcome["balance"]) == \
        ("orders", ["http://10.0.0.5:8000", "http://10.0.0.6:8000"], "least_connections")
    assert explain(compiled, DescribedRequest("GET", "/x"))["outcome"]["upstream"] == \
        "http://127.0.0.1:9/x"


# --- through a running gateway -----------------------------------------------------------------

ROUTES = """\
  - name: sync  # the recorders' end-of-exchange marker
    match: {host: sync.test}
    upstream: other
  - name: svc
    match: {path_prefix: /svc/}
    upstream: svc
  - name: other
    match: {path_prefix: /}
    upstream: other
"""


def upstreams_block(svc: list[str], other: str) -> str:
    return f"""\
upstreams:
  svc:
    targets: [{", ".join(svc)}]
    health: {{path: /health, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2}}
    passive_health: {{failures: 1, back_off: 30s}}
    timeouts: {{connect: 500ms}}
  other: {{url: "{other}"}}
"""


@pytest.mark.integration
def test_routes_reach_their_upstream_and_a_killed_target_is_ejected_then_readmitted(
        tmp_path: Path) -> None:
    svc = [start_recorder(tmp_path) for _ in range(3)]
    other = start_recorder(tmp_path)
    started = [*svc, other]
    gw = None
    try:
        gw = start_gateway(tmp_path, "http://127.0.0.1:9", routes=ROUTES,
                           top_extra=upstreams_block([r.url for r in svc], other.url))
        marks = [r.mark() for r in svc]
        other_mark = other.mark()
        for i in range(300):
            assert request(gw.port, "GET", f"/svc/{i}").status == 200
        assert request(gw.port, "GET", "/elsewhere").status == 200
        # (a recorder logs each request before it answers: the counts are complete)
        counts = [sum(1 for e in r.since(m) if str(e.get("target", "")).startswith("/svc/"))
                  for r, m in zip(svc, marks, strict=True)]
        assert sum(counts) == 300 and all(90 <= c <= 110 for c in counts), counts  # within 10%
        other.sync(gw.port)
        assert [e["target"] for e in other.since(other_mark)
                if e.get("target") != "/health"] == ["/elsewhere"]

        # kill one target: every request still succeeds (retried elsewhere), it is ejected
        # and the active checks mark it down
        dead = svc[0]
        dead_url = dead.url
        stop(dead.proc)
        statuses = [request(gw.port, "GET", f"/svc/after-{i}").status for i in range(30)]
        assert statuses == [200] * 30
        wait_until(lambda: value(gw, "gateway_upstream_target_up", upstream="svc",
                                 target=dead_url) == 0, timeout=10)

        # started again where it was: readmitted after two passing checks, and chosen again
        revived = start_recorder(tmp_path, port=dead.port)
        started.append(revived)
        wait_until(lambda: value(gw, "gateway_upstream_target_up", upstream="svc",
                                 target=dead_url) == 1, timeout=10)
        mark = revived.mark()
        for i in range(30):
            assert request(gw.port, "GET", f"/svc/back-{i}").status == 200
        assert sum(1 for e in revived.since(mark)
                   if str(e.get("target", "")).startswith("/svc/back-")) >= 5
        ready = request(gw.admin_port, "GET", "/ready")
        assert ready.status == 200, json.loads(ready.body)
    finally:
        if gw is not None:
            stop(gw.proc)
        for r in started:
            if r.proc.poll() is None:
                stop(r.proc)
