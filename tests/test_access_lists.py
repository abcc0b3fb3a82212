"""Access lists (`access_lists`, a route's `access`): the decision, the policy's errors, the
plan, and a table of requests through a running gateway, each stating what the upstream
received, with `gateway explain` agreeing on every case."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.access import AccessOutcome, judge
from gateway.compiled import CompiledPolicy
from gateway.config import load_policy
from gateway.explain import DescribedRequest, explain
from gateway.plan import Action, Head, plan
from gateway.settings.access import AccessList
from tests.support.client import request
from tests.support.metrics import value
from tests.support.policy import problems, write_policy
from tests.support.recorder import gateway_before_recorder

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("access_lists")

OFFICE = AccessList("office", allow=(ip_network("203.0.113.0/24"), ip_network("2001:db8::/32")),
                    deny=(ip_network("203.0.113.66/32"),))


# --- the decision ------------------------------------------------------------------------------

@pytest.mark.parametrize(("client", "outcome"), [
    ("203.0.113.7", AccessOutcome.ALLOWED),
    ("203.0.113.66", AccessOutcome.DENIED),  # deny wins over the allow range that covers it
    ("198.51.100.7", AccessOutcome.NOT_ALLOWED),
    ("::ffff:203.0.113.7", AccessOutcome.ALLOWED),  # IPv4-mapped: judged as IPv4
    ("::ffff:203.0.113.66", AccessOutcome.DENIED),
    ("2001:db8::1", AccessOutcome.ALLOWED),
    ("2001:db9::1", AccessOutcome.NOT_ALLOWED),
    ("", AccessOutcome.UNKNOWN_ADDRESS),  # fails closed
    ("not-an-ip", AccessOutcome.UNKNOWN_ADDRESS),
])
def test_the_client_ip_is_judged_deny_first_then_allow(client: str,
                                                        outcome: AccessOutcome) -> None:
    assert judge(OFFICE, client) is outcome


def test_a_deny_only_list_serves_everyone_else_and_no_list_judges_nothing() -> None:
    blocklist = AccessList("blocklist", deny=OFFICE.deny)
    assert judge(blocklist, "198.51.100.7") is AccessOutcome.ALLOWED
    assert judge(blocklist, "203.0.113.66") is AccessOutcome.DENIED
    assert judge(None, "203.0.113.66") is AccessOutcome.NO_LIST
    assert not AccessOutcome.ALLOWED.refused and AccessOutcome.NOT_ALLOWED.refused


# --- the policy --------------------------------------------------------------------------------

BASE = """\
version: 1
upstream: {url: "http://127.0.0.1:9"}
"""


def test_bad_ranges_and_names_are_errors_at_their_node(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + """\
access_lists:
  office: {allow: [203.0.113.1/24, "::ffff:10.0.0.0/104"], deny: [nonsense]}
  empty: {}
  none: {deny: [10.0.0.0/8]}
routes:
  - {name: a, match: {path_prefix: /a/}, access: elsewhere}
  - {name: b, match: {path_prefix: /}, access: empty}
""")
    assert problems(path) == [
        f"{path}:4:20: access_lists.office.allow: '203.0.113.1/24' is not a CIDR "
        "(203.0.113.1/24 has host bits set)",
        f"{path}:4:36: access_lists.office.allow: '::ffff:10.0.0.0/104' is an IPv4-mapped "
        "range; write it as IPv4 (mapped client addresses are judged as IPv4)",
        f"{path}:4:67: access_lists.office.deny: 'nonsense' is not a CIDR "
        "('nonsense' does not appear to be an IPv4 or IPv6 network)",
        f"{path}:5:10: access_lists.empty needs 'allow' or 'deny' ranges",
        f"{path}:6:9: access_lists policy name 'none' is reserved (it switches a default off)",
        f"{path}:8:50: routes[0].access: unknown access list 'elsewhere' (defined: office, "
        "empty, none)",
    ]


def compiled(tmp_path: Path, text: str) -> CompiledPolicy:
    return CompiledPolicy.build(load_policy(write_policy(tmp_path, BASE + text)))


def test_default_applies_unless_a_route_names_another_or_none(tmp_path: Path) -> None:
    policy = compiled(tmp_path, """\
access_lists:
  default: {deny: [198.51.100.0/24]}
  office: {allow: [203.0.113.0/24]}
routes:
  - {name: office, match: {path_prefix: /office/}, access: office}
  - {name: open, match: {path_prefix: /open/}, access: none}
  - {name: rest, match: {path_prefix: /}}
""")
    assert {name: a.name for name, a in policy.route_access.items()} == \
        {"office": "office", "rest": "default"}


def test_a_list_no_route_uses_is_warned_about(tmp_path: Path) -> None:
    loaded = load_policy(write_policy(tmp_path, BASE + """\
access_lists:
  office: {allow: [203.0.113.0/24]}
routes:
  - {name: rest, match: {path_prefix: /}}
"""))
    assert [p.message for p in loaded.warnings] == \
        ["access list 'office' is not used by any route"]


def head(method: str, target: str, peer: str, **headers: str) -> Head:
    return Head(method, target, CIMultiDictProxy(CIMultiDict({"Host": "h", **headers})), peer)


def test_a_refused_client_is_answered_403_before_any_limit_or_preflight(
        tmp_path: Path) -> None:
    policy = compiled(tmp_path, """\
rate_limits:
  api: {limit: 5, per: 1m}
cors:
  default: {allow_origins: ["https://app.example"], allow_methods: [GET, PUT]}
access_lists:
  office: {allow: [203.0.113.0/24]}
routes:
  - {name: office, match: {path_prefix: /}, access: office, rate_limits: [api]}
""")
    refused = plan(policy, head("GET", "/x", "198.51.100.7"), trusted_peer=False,
                   request_id="r")
    assert refused.action is Action.ANSWER and refused.verdict.status == 403
    assert refused.route is not None and refused.route.name == "office"  # its headers apply
    assert refused.limits is None  # spends no quota
    assert (refused.access, refused.access_list) == (AccessOutcome.NOT_ALLOWED, "office")
    preflight = plan(policy, head("OPTIONS", "/x", "198.51.100.7",
                                  Origin="https://app.example",
                                  **{"Access-Control-Request-Method": "PUT"}),
                     trusted_peer=False, request_id="r")
    assert preflight.action is Action.ANSWER and preflight.verdict.status == 403
    served = plan(policy, head("GET", "/x", "203.0.113.9"), trusted_peer=False, request_id="r")
    assert served.action is Action.FORWARD and served.access is AccessOutcome.ALLOWED
    assert served.limits is not None


# --- through a running gateway -----------------------------------------------------------------

ROUTES = """\
  - name: office
    match: {path_prefix: /office/}
    access: office
  - name: open
    match: {path_prefix: /open/}
    access: none
  - name: rest
    match: {path_prefix: /}
"""
LISTS = """\
access_lists:
  default: {deny: [198.51.100.0/24]}
  office: {allow: [203.0.113.0/24], deny: [203.0.113.66/32]}
"""

# (path, X-Forwarded-For, status); the peer, 127.0.0.1, is a trusted proxy
CASES = [
    ("/office/a", "203.0.113.7", 200),
    ("/office/b", "203.0.113.66", 403),  # denied inside the allowed range
    ("/office/c", "198.51.100.7", 403),  # not in the allow range
    ("/office/d", "::ffff:203.0.113.8", 200),  # mapped: judged as IPv4
    ("/office/e", "203.0.113.7, 198.51.100.7", 403),  # the nearest untrusted hop is the client
    ("/office/f", "198.51.100.7, 203.0.113.7", 200),  # ... whatever the client wrote before it
    ("/open/g", "198.51.100.7", 200),  # access: none
    ("/h", "198.51.100.7", 403),  # the default list
    ("/i", "192.0.2.1", 200),
    ("/j", None, 200),  # no header: the peer, 127.0.0.1, is the client
]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    with gateway_before_recorder(tmp_path_factory.mktemp("access"),
                                 routes=ROUTES, top_extra=LISTS,
                                 server_extra="trusted_proxies: [127.0.0.1/32]") as started:
        yield started


@pytest.mark.integration
def test_each_case_reaches_the_upstream_exactly_when_the_list_serves_the_client(
        running) -> None:
    gw, rec = running
    policy = CompiledPolicy.build(load_policy(gw.config))
    mark = rec.mark()
    for path, xff, status in CASES:
        headers = {"X-Forwarded-For": xff} if xff is not None else {}
        reply = request(gw.port, "GET", path, headers=headers)
        assert reply.status == status, (path, xff, reply.body)
        report = explain(policy, DescribedRequest("GET", path, tuple(headers.items()),
                                                  peer="127.0.0.1"))
        assert report["outcome"].get("status", 200) == status, (path, report)
        if status == 403:
            body = json.loads(reply.body)
            assert reply.headers["Content-Type"] == "application/problem+json"
            assert body["status"] == 403 and "office" not in body["detail"]
            assert report["access"]["outcome"] in ("denied", "not in an allow range")
    rec.sync(gw.port)
    reached = [entry["target"] for entry in rec.since(mark)]
    assert reached == [path for path, _, status in CASES if status == 200]
    assert value(gw, "gateway_access_refusals_total", route="office", list="office") == 3
    assert value(gw, "gateway_access_refusals_total", route="rest", list="default") == 1
