"""`gateway explain` and `gateway test`, and the shipped policies with their shipped cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import load_policy
from tests.support.processes import ROOT, gateway_cli

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

POLICIES = ROOT / "policies"
CASES = POLICIES / "cases" / "gateway.yaml"
PRODUCTION_ENV = {"UPSTREAM_URL": "http://app:8000", "FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com",
                  "TRUSTED_PROXIES": "10.0.0.0/8"}


def explain_json(*args: str) -> dict:
    result = gateway_cli("explain", "--config", str(POLICIES / "development.yaml"), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_explain_reports_route_path_client_ip_and_upstream() -> None:
    report = explain_json("POST", "http://shop.example/api/x/%2e%2e/auth/login")
    assert report["path"] == "/api/auth/login"
    assert report["route"]["name"] == "login"
    assert report["route"]["matched_because"][0] == "path is exactly /api/auth/login"
    assert report["outcome"] == {"action": "forward", "continue": False,
                                 "upstream": "http://127.0.0.1:8000/api/auth/login",
                                 "upstream_name": "default", "balance": "round_robin",
                                 "targets": ["http://127.0.0.1:8000"]}
    assert dict(report["upstream_request"]["set"])["X-Forwarded-Host"] == "shop.example"


def test_explain_client_ip_follows_the_trusted_proxy_rule() -> None:
    trusted = explain_json("--client-ip", "127.0.0.1", "-H", "X-Forwarded-For: 6.6.6.6",
                           "GET", "/")
    assert trusted["client_ip"]["address"] == "127.0.0.1"  # development trusts no proxy


def test_explain_with_a_trusting_policy_believes_forwarded_for(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"extends: {POLICIES / 'development.yaml'}\n"
                      "server: {trusted_proxies: [10.0.0.0/8]}\n")
    result = gateway_cli("explain", "--config", str(policy), "--json", "--client-ip", "10.0.0.2",
                     "-H", "X-Forwarded-For: 198.51.100.4, 10.0.0.9", "GET", "/api/campaigns")
    report = json.loads(result.stdout)
    assert report["client_ip"]["address"] == "198.51.100.4"
    assert "trusted proxy" in report["client_ip"]["why"]


def test_explain_refusal_names_status_and_reason() -> None:
    report = explain_json("GET", "/a%2Fb")
    assert report["outcome"] == {"action": "answer", "status": 400,
                                 "detail": "encoded slash (%2F) in path"}
    assert report["route"] is None


def test_explain_human_output_is_readable() -> None:
    result = gateway_cli("explain", "--config", str(POLICIES / "development.yaml"), "GET",
                         "/health")
    assert result.returncode == 0
    assert "route:           health" in result.stdout
    assert "normalized path: /health" in result.stdout


def test_explain_rejects_a_malformed_header_argument() -> None:
    result = gateway_cli("explain", "--config", str(POLICIES / "development.yaml"), "-H", "nocolon",
                     "GET", "/")
    assert result.returncode == 1 and "Name: value" in result.stderr


@pytest.mark.parametrize(("policy", "cases"), [
    ("gateway.yaml", "gateway.yaml"), ("development.yaml", "gateway.yaml"),
    ("production.yaml", "gateway.yaml"), ("development.yaml", "development.yaml"),
    ("production.yaml", "production.yaml")])
def test_shipped_cases_pass_on_the_shipped_policies(policy: str, cases: str) -> None:
    result = gateway_cli("test", "--config", str(POLICIES / policy),
                     str(POLICIES / "cases" / cases), env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(" passed, 0 failed")


def test_environment_specific_cases_fail_on_the_other_environment() -> None:
    result = gateway_cli("test", "--config", str(POLICIES / "production.yaml"),
                     str(POLICIES / "cases" / "development.yaml"), env=PRODUCTION_ENV)
    assert result.returncode == 1
    assert "FAIL any local front end may call the API with credentials" in result.stdout


def test_a_failing_case_exits_1_and_is_named(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: health is the api route\n"
                     "    request: {method: GET, url: /health}\n"
                     "    expect: {route: api}\n"
                     "  - name: still fine\n    request: {url: /health}\n"
                     "    expect: {route: health}\n")
    result = gateway_cli("test", "--config", str(POLICIES / "development.yaml"), str(cases))
    assert result.returncode == 1
    assert "FAIL health is the api route" in result.stdout
    assert "route: expected 'api', got 'health'" in result.stdout
    assert "ok   still fine" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_a_malformed_cases_file_exits_2_with_positions(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: x\n    request: {url: /}\n    expect: {rout: api}\n")
    result = gateway_cli("test", "--config", str(POLICIES / "development.yaml"), str(cases))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{cases}:4:14: unknown key 'rout'")


def test_production_requires_upstream_url() -> None:
    result = gateway_cli("check", "--config", str(POLICIES / "production.yaml"),
                     env={"UPSTREAM_URL": ""})
    assert result.returncode == 2
    assert "UPSTREAM_URL" in result.stderr


def test_development_and_production_differ_as_documented() -> None:
    dev = load_policy(POLICIES / "development.yaml", {}).policy
    prod = load_policy(POLICIES / "production.yaml", PRODUCTION_ENV).policy
    assert (dev.environment, prod.environment) == ("development", "production")
    assert dev.server.trusted_proxies == () and prod.server.trusted_proxies
    assert prod.upstream.targets[0].host == "app"
    assert [r.name for r in dev.routes] == [r.name for r in prod.routes]


def test_explain_lists_each_rate_limit_with_its_key() -> None:
    report = explain_json("--client-ip", "203.0.113.9", "POST", "/api/auth/login")
    assert [(lim["name"], lim["key"]) for lim in report["rate_limits"]] == [
        ("login", "gw:{ip=203.0.113.9}:login:s900000"),
        ("api", "gw:{ip=203.0.113.9}:api:s60000"),
        ("global", "gw:{ip=203.0.113.9}:global:s3600000")]


def test_explain_says_when_a_missing_header_key_falls_back_to_the_client_ip(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"extends: {POLICIES / 'development.yaml'}\n"
                      "rate_limits:\n  api: {key: \"header:X-Tenant\"}\n")
    result = gateway_cli("explain", "--config", str(policy), "--json", "GET", "/api/campaigns")
    api = json.loads(result.stdout)["rate_limits"][0]
    assert api["key"] == "gw:{ip=192.0.2.10}:api:s60000"
    assert api["note"] == "header x-tenant missing: keyed by client IP"
    with_header = gateway_cli("explain", "--config", str(policy), "--json", "-H", "X-Tenant: acme",
                          "GET", "/api/campaigns")
    assert json.loads(with_header.stdout)["rate_limits"][0]["key"] == \
        "gw:{h.x-tenant=acme}:api:s60000"
