"""The shipped policies keep the promises they make (issue 12), through real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.config import load_policy
from tests.support.client import request
from tests.support.processes import ROOT, free_port, run_shipped, stop
from tests.support.redis_server import start_redis

POLICIES = ROOT / "policies"
PRODUCTION_ENV = {"FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com"}
LOGIN = {"Content-Type": "application/json"}


def gateway_cli(*args: str, env: dict[str, str] | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


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
