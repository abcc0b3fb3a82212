"""Path rewriting (`routes[].rewrite`): the pure rewrite, its guarantees for any normalized
path, the policy's errors, and a table of requests through a running gateway stating what the
upstream received, with `gateway explain` agreeing on every case."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.compiled import CompiledPolicy
from gateway.config import load_policy
from gateway.explain import DescribedRequest, explain
from gateway.http.normalize import normalize_path
from gateway.http.rewrite import rewrite_path
from gateway.settings.policy import PathRewrite
from tests.support.client import request
from tests.support.policy import problems, write_policy
from tests.support.recorder import gateway_before_recorder

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("rewrite")


@pytest.mark.parametrize(("rewrite", "path", "sent"), [
    (PathRewrite(strip_prefix="/orders"), "/orders/12", "/12"),
    (PathRewrite(strip_prefix="/orders"), "/orders/12/items/", "/12/items/"),
    (PathRewrite(strip_prefix="/orders"), "/orders", "/"),
    (PathRewrite(strip_prefix="/orders"), "/orders/", "/"),
    (PathRewrite(strip_prefix="/api/v1"), "/api/v1/users", "/users"),
    # whole segments: the route matched them in its own form (case, ;params, trailing dots)
    (PathRewrite(strip_prefix="/orders"), "/Orders;jsessionid=1/12", "/12"),
    (PathRewrite(add_prefix="/v2"), "/12", "/v2/12"),
    (PathRewrite(add_prefix="/v2"), "/", "/v2/"),
    (PathRewrite(strip_prefix="/orders", add_prefix="/v2/orders"), "/orders/12",
     "/v2/orders/12"),
    (PathRewrite(replace="/health"), "/healthz/deep", "/health"),
])
def test_whole_segments_move(rewrite: PathRewrite, path: str, sent: str) -> None:
    assert rewrite_path(rewrite, path) == sent


_SEGMENT = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@%2E", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(rest=st.lists(_SEGMENT, max_size=5), trailing=st.booleans(),
       rewrite=st.sampled_from([
           PathRewrite(strip_prefix="/orders"), PathRewrite(add_prefix="/v2"),
           PathRewrite(strip_prefix="/orders", add_prefix="/a/b"),
           PathRewrite(strip_prefix="/orders/x")]))
def test_no_rewrite_of_a_normalized_path_makes_a_dot_segment_or_an_encoded_slash(
        rest: list[str], trailing: bool, rewrite: PathRewrite) -> None:
    raw = "/orders/x/" + "/".join(rest) + ("/" if trailing and rest else "")
    try:
        path = normalize_path(raw)
    except ValueError:  # refused before any route: nothing to rewrite
        return
    if not (path.startswith("/orders/x/") or path == "/orders/x"):
        return  # a '..' left the prefix: the route would not have matched
    sent = rewrite_path(rewrite, path)
    assert normalize_path(sent) == sent  # already normalized: no dot segment, no '//'
    assert "%2F" not in sent.upper() and not sent.startswith("//")


BASE = """\
version: 1
upstream: {url: "http://127.0.0.1:9"}
routes:
"""


def test_rewrites_that_could_cut_a_segment_or_are_not_paths_are_errors(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + """\
  - {name: a, match: {path_prefix: /orders}, rewrite: {strip_prefix: /orders}}
  - {name: b, match: {path_prefix: /b/}, rewrite: {strip_prefix: /b/}}
  - {name: c, match: {path_prefix: /c/}, rewrite: {add_prefix: /v2/../v3}}
  - {name: d, match: {path_prefix: /d/}, rewrite: {replace: /x, add_prefix: /y}}
  - {name: e, match: {host: e.example}, rewrite: {strip_prefix: /e}}
  - {name: f, match: {path_prefix: /f/}, rewrite: {}}
  - {name: g, match: {path_prefix: /}, rewrite: {replace: x}}
""")
    assert problems(path) == [
        f"{path}:4:70: routes[0].rewrite.strip_prefix '/orders' must cover every path the "
        "route matches: match path_prefix '/orders/' (or a path under it)",
        f"{path}:5:66: routes[1].rewrite.strip_prefix '/b/' must name segments without a "
        "trailing '/' (e.g. /orders)",
        f"{path}:6:64: routes[2].rewrite.add_prefix '/v2/../v3' is not in normalized form; "
        "requests arrive as '/v3'",
        f"{path}:7:51: routes[3].rewrite: replace excludes strip_prefix and add_prefix",
        f"{path}:8:65: routes[4].rewrite.strip_prefix '/e' must cover every path the route "
        "matches: match path_prefix '/e/' (or a path under it)",
        f"{path}:9:51: routes[5].rewrite needs strip_prefix, add_prefix or replace",
        f"{path}:10:59: routes[6].rewrite.replace must start with '/'",
    ]


# --- through a running gateway -----------------------------------------------------------------

ROUTES = """\
  - name: sync  # the recorder's end-of-exchange marker, not rewritten
    match: {host: sync.test}
  - name: orders
    match: {path_prefix: /orders/}
    rewrite: {strip_prefix: /orders}
  - name: legacy
    match: {path_prefix: /legacy/}
    rewrite: {strip_prefix: /legacy, add_prefix: /v2}
  - name: status
    match: {path: /status}
    rewrite: {replace: /health/deep}
  - name: rest
    match: {path_prefix: /}
    rewrite: {add_prefix: /app}
"""

# (what the client sent, what the upstream must receive)
CASES = [
    ("/orders/12", "/12"),
    ("/orders/12?expand=items&x=%2F", "/12?expand=items&x=%2F"),  # the query as sent
    ("/orders/a/../b", "/b"),  # normalized first (stays under /orders/)
    ("/orders/", "/"),
    ("/legacy/users/7", "/v2/users/7"),
    ("/status?verbose=1", "/health/deep?verbose=1"),
    ("/", "/app/"),
    ("/x/%7Ey", "/app/x/~y"),
    ("/orders/../admin", "/app/admin"),  # leaves /orders/ while normalized: another route
]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    with gateway_before_recorder(tmp_path_factory.mktemp("rewrite"),
                                 routes=ROUTES) as started:
        yield started


@pytest.mark.integration
def test_the_upstream_receives_the_rewritten_path_and_explain_says_so(running) -> None:
    gw, rec = running
    policy = CompiledPolicy.build(load_policy(gw.config))
    for sent, received in CASES:
        mark = rec.mark()
        reply = request(gw.port, "GET", sent)
        assert reply.status == 200, (sent, reply.body)
        rec.sync(gw.port)
        assert [e["target"] for e in rec.since(mark)] == [received], sent
        report = explain(policy, DescribedRequest("GET", sent))
        assert report["outcome"]["upstream"] == rec.url + received, (sent, report["outcome"])
