"""Policy loading: valid files become frozen objects; broken ones report FILE:LINE:COL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_policy
from gateway.units import parse_duration, parse_size
from tests.support.policy import problems, write_policy
from tests.support.processes import gateway_cli

VALID = """\
version: 1
environment: staging
server:
  listen: 0.0.0.0:8080
  admin_listen: 127.0.0.1:9090
  trusted_proxies: [10.0.0.0/8, "fd00::/8"]
  timeouts: {header: 5s, idle: 1m, body: 30s, shutdown: 10s}
  limits: {max_body_size: 1MiB, max_header_size: 4KiB, max_headers: 50}
upstream:
  url: http://127.0.0.1:8000
  timeouts: {connect: 500ms, read: 5s}
  retries: 2
routes:
  - name: login
    match: {path: /api/auth/login, methods: [POST]}
  - name: api
    match: {path_prefix: /api/, host: "*.example.com"}
    websocket: true
  - name: everything
    match: {path_prefix: /}
"""


def test_valid_policy_loads_into_frozen_objects(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, VALID)).policy
    assert policy.environment == "staging"
    assert policy.server.timeouts.header == 5.0 and policy.server.timeouts.idle == 60.0
    assert policy.server.limits.max_body_size == 1024 * 1024
    assert policy.upstream.connect_timeout == 0.5 and policy.upstream.retries == 2
    assert [r.name for r in policy.routes] == ["login", "api", "everything"]
    assert policy.routes[1].websocket is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.environment = "x"  # type: ignore[misc]


def test_get_routes_also_accept_head(tmp_path: Path) -> None:
    text = VALID.replace("methods: [POST]", "methods: [GET]")
    methods = load_policy(write_policy(tmp_path, text)).policy.routes[0].match.methods
    assert methods == {"GET", "HEAD"}


def test_unknown_key_names_file_line_column_and_suggests(tmp_path: Path) -> None:
    text = VALID.replace("  listen: 0.0.0.0:8080", "  listne: 0.0.0.0:8080")
    found = problems(write_policy(tmp_path, text))
    assert any(p.startswith(f"{tmp_path}/policy.yaml:4:3: unknown key 'listne'")
               and "did you mean 'listen'" in p for p in found)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace("header: 5s", "header: 5").replace("retries: 2", "retries: many")
    found = problems(write_policy(tmp_path, text))
    assert len(found) == 2
    assert any(":7:22: server.timeouts.header" in p for p in found)
    assert any(":12:12: upstream.retries must be an integer" in p for p in found)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("version: 1", "version: 2", "unsupported policy version"),
    ("url: http://127.0.0.1:8000", "url: ftp://x", "must be an http:// or https:// URL"),
    ("url: http://127.0.0.1:8000", "url: http://h/base", "no path"),
    ("10.0.0.0/8", "10.0.0.1/8", "is not a CIDR"),
    ("max_body_size: 1MiB", "max_body_size: lots", "is not a size"),
    ("listen: 0.0.0.0:8080", "listen: 0.0.0.0:99999", "must be HOST:PORT"),
    ("path: /api/auth/login", "path: /api/../login", "not in normalized form"),
    ("path: /api/auth/login", "path: api/auth", "must start with '/'"),
    ("methods: [POST]", "methods: [post]", "upper-case method name"),
    ("host: \"*.example.com\"", "host: Example.COM", "lower-case host name"),
    ("name: everything", "name: login", "duplicate route name 'login'"),
    ("websocket: true", "websocket: sometimes", "must be true or false"),
    ("match: {path_prefix: /}", "match: {path_prefix: /, path: /x}", "not both"),
    ("  url: http://127.0.0.1:8000", "  url: http://a\n  targets: [http://b]", "exactly one of"),
    ("admin_listen: 127.0.0.1:9090", "admin_listen: 0.0.0.0:8080", "would use the same port"),
    ("environment: staging", "environment: staging\nenvironment: prod", "duplicate key"),
])
def test_invalid_values_are_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in VALID
    found = problems(write_policy(tmp_path, VALID.replace(old, new, 1)))
    assert any(message in p for p in found), found


def test_missing_required_sections(tmp_path: Path) -> None:
    found = problems(write_policy(tmp_path, "version: 1\n"))
    assert any("missing required key 'upstream'" in p for p in found)
    assert any("missing required key 'routes'" in p for p in found)


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    found = problems(write_policy(tmp_path, "version: 1\nroutes: [\n"))
    assert found[0].startswith(f"{tmp_path}/policy.yaml:3:1: YAML syntax")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    assert "policy file is empty" in problems(write_policy(tmp_path, ""))[0]


def test_shadowed_route_is_a_warning_not_an_error(tmp_path: Path) -> None:
    text = VALID + "  - name: never\n    match: {path: /x}\n"
    loaded = load_policy(write_policy(tmp_path, text))
    assert [str(w) for w in loaded.warnings] == [
        f"{tmp_path}/policy.yaml:21:5: warning: route 'never' is shadowed by the earlier "
        "route 'everything' and never matches"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("1s", 1), ("15m", 900), ("24h", 86400), ("1d", 86400), ("1h30m", 5400),
    ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["60", "1x", "", "s", "1s2", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("512", 512), ("8KiB", 8192), ("10MiB", 10 * 1024**2), ("1GB", 10**9)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.integration
def test_check_command_exits_2_with_file_line_col(tmp_path: Path) -> None:
    path = write_policy(tmp_path, VALID.replace("retries: 2", "retries: -1"))
    result = gateway_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:12:12: upstream.retries must be at least 0"


@pytest.mark.integration
def test_check_command_exits_0_on_a_valid_file(tmp_path: Path) -> None:
    result = gateway_cli("check", "--config", str(write_policy(tmp_path, VALID)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.integration
def test_check_command_reads_gateway_config_env(tmp_path: Path) -> None:
    path = write_policy(tmp_path, VALID)
    result = subprocess.run([sys.executable, "-m", "gateway", "check"], capture_output=True,
                            text=True, timeout=30, env={"GATEWAY_CONFIG": str(path),
                                                        "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_missing_config_is_one_clear_line_and_exit_1() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "check"], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "--config" in result.stderr


@pytest.mark.integration
def test_version_command() -> None:
    from gateway import __version__
    result = gateway_cli("version")
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize(("old", "new", "message"), [
    ("header: 5s", "header: \u0665s", "is not a duration"),  # an Arabic-Indic digit five
    ("max_body_size: 1MiB", "max_body_size: \u0661MiB", "is not a size"),
    ("url: http://127.0.0.1:8000", "url: http://127.0.0.1:0", "port 0"),
    ("environment: staging", 'environment: ""', "environment must not be empty"),
])
def test_found_by_the_property_tests(tmp_path: Path, old: str, new: str, message: str) -> None:
    found = problems(write_policy(tmp_path, VALID.replace(old, new, 1)))
    assert any(message in p for p in found), found
