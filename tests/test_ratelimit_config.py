"""The rate_limits and redis sections: what loads, what is refused, and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_policy
from gateway.settings.ratelimit import KeyPart
from tests.support.policy import problems, write_policy

BASE = """\
version: 1
upstream: {url: "http://127.0.0.1:8000"}
redis: {url: "${REDIS_URL:-}", timeout: 50ms, failure_mode: closed}
rate_limits:
  api: {limit: 100, per: 1m}
  login: {limit: 5, per: 15m, algorithm: fixed_window}
  tenant: {limit: 10, per: 1s, key: "client_ip+header:X-Tenant", algorithm: token_bucket, burst: 20}
  everyone: {limit: 1000, per: 1h, key: global, mode: shadow}
routes:
  - name: login
    match: {path: /login}
    rate_limits: [api, login]
  - name: rest
    match: {path_prefix: /}
    rate_limits: [tenant, everyone]
"""


def test_limits_load_with_defaults(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, BASE, "p.yaml"), {}).policy
    api = policy.rate_limits["api"]
    assert (api.limit, api.period_ms, api.algorithm, api.mode) == (100, 60_000, "sliding_window",
                                                                   "enforce")
    assert api.key == (KeyPart("client_ip"),)
    tenant = policy.rate_limits["tenant"]
    assert tenant.key == (KeyPart("client_ip"), KeyPart("header", "x-tenant"))
    assert tenant.capacity == 20
    assert policy.rate_limits["everyone"].enforced is False
    assert policy.routes[0].rate_limits == ("api", "login")
    assert policy.redis.url == "" and policy.redis.timeout == 0.05
    assert policy.redis.failure_mode == "closed"


def test_redis_url_from_the_environment(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://:pw@10.0.0.3:6379/1"}
    policy = load_policy(write_policy(tmp_path, BASE, "p.yaml"), env).policy
    assert policy.redis.url == "redis://:pw@10.0.0.3:6379/1"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("limit: 100, per: 1m", "limit: 0, per: 1m", "rate_limits.api.limit must be at least 1"),
    ("limit: 100, per: 1m", "limit: 100, per: 0s", "must be greater than zero"),
    ("limit: 100, per: 1m", "limit: 100", "rate_limits.api needs 'per'"),
    ("algorithm: fixed_window", "algorithm: leaky", "must be one of sliding_window"),
    ("algorithm: fixed_window", "algorithm: fixed_window, burst: 3",
     "burst applies only to algorithm token_bucket"),
    ("mode: shadow", "mode: dry", "mode must be one of enforce, shadow"),
    ('key: "client_ip+header:X-Tenant"', 'key: "header:X Tenant"', "is not a valid header name"),
    ('key: "client_ip+header:X-Tenant"', 'key: "cookie:sid"', "unknown key part"),
    ("key: global", "key: global+client_ip", "'global' cannot be combined"),
    ("rate_limits: [api, login]", "rate_limits: [api, logon]", "unknown rate limit 'logon'"),
    ("rate_limits: [api, login]", "rate_limits: [api, api]", "'api' is listed twice"),
    ('url: "${REDIS_URL:-}"', 'url: "http://redis"', "redis.url must start with"),
    ("failure_mode: closed", "failure_mode: maybe", "failure_mode must be one of open, closed"),
    ("timeout: 50ms", "timeout: 50ms, key_prefix: '{x}'", "must not contain '{'"),
    ("  api: {limit: 100, per: 1m}", "  api: {limit: 100, per: 1m, window: 2}",
     "unknown key 'window'"),
])
def test_invalid_limits_are_refused_at_their_node(tmp_path: Path, old: str, new: str,
                                                  message: str) -> None:
    assert old in BASE
    found = problems(write_policy(tmp_path, BASE.replace(old, new, 1), "p.yaml"), {})
    assert any(message in p for p in found), found
    assert all(p.startswith(f"{tmp_path}/p.yaml:") for p in found)
