"""The shipped policies keep the promises they make (issue 12), through real processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_policy
from tests.support.client import request
from tests.support.processes import (
    ROOT,
    free_port,
    gateway_cli,
    run_policy_file,
    run_shipped,
    stop,
    wait_until,
)
from tests.support.redis_server import start_redis

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

POLICIES = ROOT / "policies"
PRODUCTION_ENV = {"FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com",
                  "TRUSTED_PROXIES": "10.0.0.0/8"}
LOGIN = {"Content-Type": "application/json"}


# 1. workers and in-process counters

def test_several_workers_without_redis_refuse_to_start_with_one_clear_line(upstream) -> None:
    port, admin = free_port(), free_port()
    result = gateway_cli("run", "--config", str(POLICIES / "development.yaml"), "--workers", "2",
                         env={"UPSTREAM_URL": upstream.url,
                              "GATEWAY_LISTEN": f"127.0.0.1:{port}",
                              "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "set redis.url (REDIS_URL)" in lines[0]


def test_check_refuses_workers_with_in_process_counters(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nserver: {workers: 2}\nupstream: {url: 'http://127.0.0.1:1'}\n"
                      "rate_limits: {a: {limit: 1, per: 1m}}\n"
                      "routes: [{name: r, match: {path_prefix: /}, rate_limits: [a]}]\n")
    result = gateway_cli("check", "--config", str(policy))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{policy}:2:19: 2 workers with in-process rate-limit")


def test_production_with_two_workers_and_redis_admits_exactly_the_login_limit(
        tmp_path: Path, upstream) -> None:
    redis = start_redis(tmp_path / "redis")
    gw = run_shipped("production.yaml", upstream.url, tmp_path,
                     env={**PRODUCTION_ENV, "REDIS_URL": redis.url, "GATEWAY_WORKERS": "2"})
    try:
        statuses = [request(gw.port, "POST", "/api/auth/login", body=b"{}",
                            headers=LOGIN).status for _ in range(12)]
        assert statuses.count(200) == 5 and statuses.count(429) == 7
    finally:
        stop(gw.proc)
        redis.stop()


def test_production_runs_one_worker_unless_told_and_given_redis() -> None:
    env = {**PRODUCTION_ENV, "UPSTREAM_URL": "http://127.0.0.1:8000"}
    assert load_policy(POLICIES / "production.yaml", env).policy.server.workers == 1
    refused = gateway_cli("check", "--config", str(POLICIES / "production.yaml"),
                          env={**env, "GATEWAY_WORKERS": "2", "REDIS_URL": ""})
    assert refused.returncode == 2 and "REDIS_URL" in refused.stderr


def extending(tmp_path: Path, base: str, overrides: str) -> Path:
    """A policy that extends a shipped one with small overrides (deep merge)."""
    path = tmp_path / f"over-{base}"
    path.write_text(f"extends: {POLICIES / base}\n{overrides}")
    return path


# 2. health checks are never locked out by a client limit, and their refusals are logged

def test_health_checks_never_spend_the_global_limit(tmp_path: Path, upstream) -> None:
    # the shipped routes with a global limit small enough to exhaust in a test
    policy = extending(tmp_path, "development.yaml",
                       "rate_limits: {global: {limit: 3, per: 1h}}\n")
    gw = run_policy_file(policy, upstream.url, tmp_path)
    try:
        polls = [request(gw.port, "GET", "/health").status for _ in range(6)]
        assert polls == [200] * 6
        # the same address still has all of its global quota for the API
        api = [request(gw.port, "GET", "/api/campaigns").status for _ in range(4)]
        assert api == [200, 200, 200, 429]
    finally:
        stop(gw.proc)


def test_refused_health_checks_are_logged_though_the_route_is_excluded(
        tmp_path: Path, upstream) -> None:
    policy = extending(tmp_path, "development.yaml",
                       "rate_limits: {health: {limit: 2, per: 1h}}\n")
    gw = run_policy_file(policy, upstream.url, tmp_path)
    try:
        statuses = [request(gw.port, "GET", "/health").status for _ in range(3)]
        assert statuses == [200, 200, 429]
        wait_until(lambda: '"status": 429' in gw.log_text() or '"status":429' in gw.log_text())
        health_lines = [json.loads(line) for line in gw.log_text().splitlines()
                        if line.startswith("{") and '"route"' in line]
        logged = [(e["route"], e["status"]) for e in health_lines if e["route"] == "health"]
        assert logged == [("health", 429)]
    finally:
        stop(gw.proc)


def test_a_source_range_can_be_exempted_from_a_limit(tmp_path: Path, upstream) -> None:
    policy = extending(tmp_path, "development.yaml",
                       "rate_limits: {api: {limit: 2, per: 1h, exempt: [127.0.0.0/8]}}\n")
    gw = run_policy_file(policy, upstream.url, tmp_path)
    try:
        replies = [request(gw.port, "GET", "/api/campaigns") for _ in range(4)]
        assert [r.status for r in replies] == [200] * 4
        # the exempt limit is not counted; the route's other limits still are
        assert replies[-1].headers["RateLimit"].startswith('"global";r=')
    finally:
        stop(gw.proc)


# 3. WebSocket handshakes meet the route's allowed origins

WS_POLICY = """\
  - name: ws
    match: {path: /ws}
    websocket: true
  - name: everything
    match: {path_prefix: /}
"""
WS_CORS = ("cors:\n  default:\n    allow_origins: [https://app.example.com]\n"
           "    allow_credentials: true\n")


def handshake(port: int, origin: str | None) -> bytes:
    head = ("GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("origin,status", [
    ("https://evil.example", b"403"), ("https://app.example.com.evil.example", b"403"),
    ("null", b"403"), ("https://app.example.com", b"101"), (None, b"101")])
def test_websocket_handshakes_are_checked_against_the_allowed_origins(
        gateway_factory, upstream, origin: str | None, status: bytes) -> None:
    gw = gateway_factory(upstream.url, routes=WS_POLICY, top_extra=WS_CORS)
    assert handshake(gw.port, origin).split(b" ")[1] == status


# 4. preflights spend no quota

def test_preflights_do_not_spend_the_login_quota(tmp_path: Path, upstream) -> None:
    gw = run_shipped("development.yaml", upstream.url, tmp_path)
    try:
        preflight = {"Origin": "http://localhost:3000",
                     "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        seen = []
        for _ in range(5):
            seen.append(request(gw.port, "OPTIONS", "/api/auth/login", headers=preflight).status)
            seen.append(request(gw.port, "POST", "/api/auth/login", body=b"{}",
                                headers={**LOGIN, "Origin": "http://localhost:3000"}).status)
        assert seen == [204, 200] * 5
        assert request(gw.port, "POST", "/api/auth/login", body=b"{}", headers=LOGIN).status \
            == 429
    finally:
        stop(gw.proc)


# 7. listeners that cannot both be opened

def test_check_refuses_listeners_on_one_port(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nserver: {listen: '0.0.0.0:8080', admin_listen: "
                      "'127.0.0.1:8080'}\nupstream: {url: 'http://127.0.0.1:1'}\n"
                      "routes: [{name: r, match: {path_prefix: /}}]\n")
    result = gateway_cli("check", "--config", str(policy))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{policy}:2:48: server.admin_listen 127.0.0.1:8080 and "
                                    "server.listen 0.0.0.0:8080 would use the same port")


def test_a_port_in_use_is_one_clear_line_and_nothing_left_unclosed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gateway_cli("run", "--config", str(POLICIES / "development.yaml"),
                             env={"GATEWAY_LISTEN": f"127.0.0.1:{port}",
                                  "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gateway: cannot listen: ")
    assert "address already in use" in result.stderr and "Unclosed" not in result.stderr


# 8. a closed pipe

@pytest.mark.parametrize("reader", ["head -1", "true"])  # `true` never reads: EPIPE at once
def test_explain_into_a_closed_pipe_exits_quietly(reader: str) -> None:
    result = subprocess.run(
        f"set -o pipefail; {sys.executable} -m gateway explain --json --config "
        f"{POLICIES / 'development.yaml'} GET /api/campaigns | {reader}", shell=True,
        capture_output=True, text=True, cwd=ROOT, timeout=30, executable="/bin/bash")
    assert result.returncode == 0
    assert result.stderr == ""


# 9. the admin port names no software, and /config tells how the last reload went

def test_admin_answers_name_no_software(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url)
    for path in ("/health", "/ready", "/metrics", "/config", "/nothing"):
        reply = request(gw.admin_port, "GET", path)
        assert "server" not in reply.header_names(), path


def test_config_shows_the_last_reload_and_its_problems(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra="watch: false")
    assert request(gw.admin_port, "GET", "/config").json()["last_reload"] is None
    good = gw.config.read_text()
    gw.config.write_text(good.replace("routes:", "routes: 5\nroutes_:"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: request(gw.admin_port, "GET", "/config").json()["last_reload"])
    last = request(gw.admin_port, "GET", "/config").json()["last_reload"]
    assert last["result"] == "failure" and last["trigger"] == "SIGHUP"
    assert last["problems"] and all(p.startswith(f"{gw.config}:") for p in last["problems"])
    gw.config.write_text(good)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: request(gw.admin_port, "GET", "/config").json()["last_reload"]
               ["result"] == "success")


# 10. production trusts exactly the proxies it is told

def test_production_requires_its_trusted_proxies() -> None:
    env = {**PRODUCTION_ENV, "UPSTREAM_URL": "http://127.0.0.1:8000"}
    del env["TRUSTED_PROXIES"]
    result = gateway_cli("check", "--config", str(POLICIES / "production.yaml"),
                         env={**env, "TRUSTED_PROXIES": ""})
    assert result.returncode == 2 and "TRUSTED_PROXIES" in result.stderr
    direct = load_policy(POLICIES / "production.yaml", {**env, "TRUSTED_PROXIES": "none"})
    assert direct.policy.server.trusted_proxies == ()
    lbs = load_policy(POLICIES / "production.yaml",
                      {**env, "TRUSTED_PROXIES": "10.1.2.0/24, 10.1.3.0/24"})
    assert [str(n) for n in lbs.policy.server.trusted_proxies] == ["10.1.2.0/24", "10.1.3.0/24"]


# 12. a browser can read the gateway's own 404

def test_a_404_from_an_allowed_origin_is_readable_by_the_browser(tmp_path: Path,
                                                                 upstream) -> None:
    policy = extending(tmp_path, "development.yaml",
                       "routes:\n  - name: api\n    match: {path_prefix: /api/}\n")
    gw = run_policy_file(policy, upstream.url, tmp_path)
    try:
        reply = request(gw.port, "GET", "/nowhere", headers={"Origin": "http://localhost:3000"})
        assert reply.status == 404
        assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert reply.headers["Access-Control-Allow-Credentials"] == "true"
        foreign = request(gw.port, "GET", "/nowhere", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.header_names()
    finally:
        stop(gw.proc)


# 6. check reports every problem, in order, without echoes

EVERYTHING_WRONG = """\
version: 1
upstream: {url: "http://127.0.0.1:8000"}
routes:
  - name: r
    match: {path_prefix: /}
    rate_limits: [api, nope, nada]
    cors: strict
rate_limits:
  api: {limit: 5, per: 5x}
cors:
  strict:
    allow_origins: ["HTTPS://App.Example.com", "null", "https://a.example.com/"]
    max_age: 48h
"""


def test_check_reports_every_problem_in_line_order_without_echoes(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(EVERYTHING_WRONG)
    result = gateway_cli("check", "--config", str(policy))
    assert result.returncode == 2
    lines = [line.removeprefix(f"{policy}:") for line in result.stderr.splitlines()]
    assert [line.split(": ", 1)[0] for line in lines] == [
        "6:24", "6:30", "9:24", "12:21", "12:48", "12:56", "13:14"]
    assert "unknown rate limit 'nope' (defined: api)" in lines[0]
    assert "unknown rate limit 'nada'" in lines[1]
    assert "'5x' is not a duration" in lines[2]
    assert "write it in lower case" in lines[3]
    assert "'null'" in lines[4] and "trailing slash" in lines[5]
    assert "max_age must be between" in lines[6]
    # the broken `api` and `strict` are reported where they are defined, not where used
    assert not any("'api'" in line or "policy 'strict'" in line for line in lines)


# 11. an extending file changes routes by name, and a dropped route does not go unnoticed

def test_an_extending_file_adds_replaces_and_removes_routes_by_name(tmp_path: Path) -> None:
    policy = extending(tmp_path, "development.yaml", """\
rate_limits:
  reports: {limit: 10, per: 1m}
routes:
  set:
    - name: reports
      match: {path_prefix: /reports/}
      rate_limits: [reports, global]
    - name: health
      match: {path: /healthz, methods: [GET]}
      rate_limits: [health]
  insert_before: everything-else
  remove: [call-events]
""")
    loaded = load_policy(policy, {})
    routes = loaded.policy.routes
    assert [r.name for r in routes] == ["health", "login", "api", "reports", "everything-else"]
    assert routes[0].match.path == "/healthz"
    assert routes[3].rate_limits == ("reports", "global")
    assert loaded.warnings == ()


def test_a_copied_routes_list_that_drops_the_limited_route_is_warned_about(
        tmp_path: Path) -> None:
    shipped = load_policy(POLICIES / "gateway.yaml", {}).policy
    kept = "\n".join(f"  - name: {r.name}\n    match: {{path_prefix: /{r.name}/}}"
                     + (f"\n    rate_limits: [{', '.join(r.rate_limits)}]" if r.rate_limits
                        else "")
                     for r in shipped.routes if r.name != "login")
    policy = extending(tmp_path, "gateway.yaml", f"routes:\n{kept}\n")
    result = gateway_cli("check", "--config", str(policy))
    assert result.returncode == 0
    assert "warning: rate limit 'login' is not used by any route" in result.stderr


def test_route_changes_name_routes_that_exist(tmp_path: Path) -> None:
    policy = extending(tmp_path, "development.yaml",
                       "routes:\n  remove: [nope]\n  insert_before: nowhere\n")
    result = gateway_cli("check", "--config", str(policy))
    assert result.returncode == 2
    assert f"{policy}:3:12: routes.remove: the extended file has no route 'nope'" \
        in result.stderr
    assert "routes.insert_before: the extended file has no route 'nowhere'" in result.stderr
