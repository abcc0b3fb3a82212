"""What `gateway explain` prints is what the running gateway does (issue 14).

For random policies (trusted proxies or not, preserve_host or not, CORS origins, security
headers, path matching) and random requests (methods, paths that normalize, route or are
refused, origins, preflights, forwarding and identity headers, headers named in Connection),
the plan explain reports is compared with a real gateway in front of the recording upstream:
the status, every header the upstream received, and the response headers the plan promises.
The gateway reloads each drawn policy (SIGHUP); explain compiles the same file in-process.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.compiled import CompiledPolicy
from gateway.config import load_policy
from gateway.explain import REQUEST_ID, DescribedRequest, explain
from tests.support.client import request
from tests.support.processes import free_port, run_gateway, stop, wait_until
from tests.support.recorder import start_recorder

pytestmark = pytest.mark.integration  # a gateway and the recording upstream

ALLOWED_ORIGIN = "https://app.example.com"

POLICY = """\
version: 1
environment: test
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
  watch: false
  trusted_proxies: {trusted}
  path_matching: {{case_sensitive: {case_sensitive}, trailing_slash: {trailing_slash}}}
upstream:
  url: {upstream}
  preserve_host: {preserve_host}
rate_limits:
  roomy: {{limit: 1000000, per: 1m, key: "client_ip+header:X-Tenant"}}
cors:
  default:
    allow_origins: [{origins}]
    allow_methods: [GET, POST, DELETE]
    allow_headers: [X-Tenant]
    allow_credentials: {credentials}
headers:
  default:
    set: {{X-Frame-Options: DENY, Strict-Transport-Security: "max-age=31536000"}}
    set_if_missing: {{Cache-Control: no-store}}
    remove: [Server, X-Powered-By]
routes:
  - name: health
    match: {{path: /health, methods: [GET]}}
    headers: none
    cors: none
  - name: api
    match: {{path_prefix: /api/}}
    rate_limits: [roomy]
  - name: public
    match: {{path_prefix: /public}}
    cors: none
  - name: sync  # the recorder's end-of-exchange marker
    match: {{path_prefix: /__sync/}}
observability: {{access_log: {{enabled: false}}}}
"""

policies = st.fixed_dictionaries({
    "trusted": st.sampled_from(["[]", "[127.0.0.1/32]"]),
    "case_sensitive": st.booleans(),
    "trailing_slash": st.sampled_from(["strict", "ignore"]),
    "preserve_host": st.booleans(),
    "origins": st.sampled_from([f'"{ALLOWED_ORIGIN}"',
                                f'"{ALLOWED_ORIGIN}", "https://*.example.org"']),
    "credentials": st.booleans(),
})

PATHS = ["/api/items", "/API/items", "/api/items/", "/api/a/../b", "/api/%2e%2e/x",
         "/api/a;jsessionid=1", "/public", "/public/x?q=1", "/health", "/nowhere",
         "/api/x%20", "//api/items"]
HEADER_CHOICES = [
    ("Origin", ALLOWED_ORIGIN), ("Origin", "https://evil.example.net"),
    ("Origin", "https://a.example.org"), ("Origin", "null"),
    ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
    ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "spoofed.example"),
    ("X-Real-IP", "6.6.6.6"), ("True-Client-IP", "6.6.6.6"), ("Forwarded", "for=1.2.3.4"),
    ("X-Tenant", "t1"), ("Connection", "X-Tenant"), ("Connection", "X-Custom"),
    ("X-Custom", "kept"), ("Via", "1.0 corp-proxy"), ("X-Request-ID", "req-from-client-1"),
    ("Accept", "application/json"), ("Cookie", "a=b"),
]
requests = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "PATCH"]),
    "path": st.sampled_from(PATHS),
    "host": st.sampled_from(["gw.test", "API.Example.com."]),
    "headers": st.lists(st.sampled_from(HEADER_CHOICES), max_size=6, unique=True),
    "preflight_method": st.sampled_from([None, "DELETE", "PUT"]),
})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    rec = start_recorder(tmp)
    port, admin_port = free_port(), free_port()
    config = tmp / "policy.yaml"
    knobs = {"trusted": "[]", "case_sensitive": True, "trailing_slash": "strict",
             "preserve_host": False, "origins": f'"{ALLOWED_ORIGIN}"', "credentials": False}
    config.write_text(render(port, admin_port, rec.url, knobs))
    gw = run_gateway(config, port, admin_port, tmp / "gateway.log")
    yield gw, rec, config
    stop(gw.proc)
    stop(rec.proc)


def render(port: int, admin_port: int, upstream: str, knobs: dict) -> str:
    values = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in knobs.items()}
    return POLICY.format(port=port, admin_port=admin_port, upstream=upstream, **values)


def reload(gw, config: Path, text: str) -> None:
    """Apply `text` and wait until the gateway runs it (its /config shows the new load)."""
    def reloads() -> float:
        text = request(gw.admin_port, "GET", "/metrics").body.decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('gateway_config_reloads_total{result="success"}'))

    before = reloads()
    config.write_text(text)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads() > before)


def send(port: int, raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = [line.split(":", 1) for line in head[1:]]
    return int(head[0].split()[1]), [(n.strip(), v.strip()) for n, v in fields]


def lower_map(pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(knobs=policies, req=requests)
def test_explain_reports_what_the_gateway_does(setup, knobs, req) -> None:
    gw, rec, config = setup
    reload(gw, config, render(gw.port, gw.admin_port, rec.url, knobs))
    compiled = CompiledPolicy.build(load_policy(config))

    headers = [("Host", req["host"]), *req["headers"]]
    if req["method"] == "OPTIONS" and req["preflight_method"]:
        headers.append(("Access-Control-Request-Method", req["preflight_method"]))
    body = b"x" * 5 if req["method"] in ("POST", "PATCH") else b""
    if body:
        headers.append(("Content-Length", str(len(body))))
    report = explain(compiled, DescribedRequest(req["method"], req["path"], tuple(headers),
                                                peer="127.0.0.1"))

    mark = rec.mark()
    raw = f"{req['method']} {req['path']} HTTP/1.1\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in headers) + "Connection: close\r\n\r\n"
    # Connection: close is the test's own: the plan is made without it
    status, response = send(gw.port, raw.encode("latin-1") + body)
    rec.sync(gw.port)
    received = rec.since(mark)
    outcome = report["outcome"]
    got = lower_map(response)

    if outcome["action"] == "answer":
        assert status == outcome["status"], (report, response)
        assert received == []  # answered by the gateway: nothing reached the upstream
    else:
        assert status == 200, (report, response)  # the recorder's answer
        assert len(received) == 1
        upstream = lower_map(received[0]["headers"])
        expected = lower_map(report["upstream_request"]["headers"])
        upstream.pop("connection", None)  # the pool's own, not the client's
        expected.pop("connection", None)
        if "x-request-id" in expected and expected["x-request-id"] == [REQUEST_ID]:
            expected["x-request-id"] = upstream.get("x-request-id")  # generated per request
        assert upstream == expected, report

    added = report["response_headers"]["added"]
    for name, value in added.items():
        if name == "X-Request-ID":
            assert "x-request-id" in got
        else:
            assert got.get(name.lower()) == [value], (name, report, response)
    for name in report["response_headers"]["removed"]:
        if not name.startswith("("):
            assert name.lower() not in got or name.lower() == "connection", (name, response)
    if outcome["action"] != "answer":
        for name, value in report["response_headers"]["if_missing"].items():
            assert got.get(name.lower()) == [value]  # the recorder sends none of them
    cors = report["cors"].get("headers", {})
    for name, value in cors.items():
        assert name.lower() in got and value in ", ".join(got[name.lower()]), (name, report)
    if not cors:
        assert "access-control-allow-origin" not in got, (report, response)
    assert ("via" in got) == ("Via" in added), (report, response)
