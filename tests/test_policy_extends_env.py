"""`${VAR}` interpolation and `extends`: values, types, merging, and where errors point."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_policy
from tests.support.policy import problems, write_policy

BASE = """\
version: 1
environment: ${ENVIRONMENT:-development}
server:
  listen: 127.0.0.1:${PORT:-8080}
  workers: ${WORKERS:-2}
  timeouts: {header: 5s, idle: 1m}
upstream:
  url: ${UPSTREAM_URL:-http://127.0.0.1:8000}
routes:
  - name: api
    match: {path_prefix: /api/}
  - name: rest
    match: {path_prefix: /}
"""


def test_defaults_apply_when_variables_are_unset(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, BASE, "p.yaml"), {}).policy
    assert policy.environment == "development"
    assert policy.server.listen.port == 8080
    assert policy.server.workers == 2  # typed as an integer after substitution
    assert policy.upstream.targets[0].port == 8000


def test_variables_override_defaults(tmp_path: Path) -> None:
    env = {"ENVIRONMENT": "production", "PORT": "9000", "WORKERS": "4",
           "UPSTREAM_URL": "http://10.0.0.5:81"}
    policy = load_policy(write_policy(tmp_path, BASE, "p.yaml"), env).policy
    assert policy.environment == "production"
    assert policy.server.listen.port == 9000 and policy.server.workers == 4
    assert policy.upstream.targets[0].host == "10.0.0.5"


def test_empty_variable_uses_the_default(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE, "p.yaml")
    assert load_policy(path, {"WORKERS": ""}).policy.server.workers == 2


def test_unset_variable_without_default_is_an_error_at_the_reference(tmp_path: Path) -> None:
    text = BASE.replace("${ENVIRONMENT:-development}", "${ENVIRONMENT}")
    path = write_policy(tmp_path, text, "p.yaml")
    assert problems(path, {}) == [
        f"{path}:2:14: environment variable ENVIRONMENT is not set "
        "(write ${ENVIRONMENT:-default} to give a default)"]


def test_a_bad_substituted_value_points_at_the_reference(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE, "p.yaml")
    found = problems(path, {"WORKERS": "many"})
    assert found == [f"{path}:5:12: server.workers must be an integer"]


def test_quoted_values_stay_strings(tmp_path: Path) -> None:
    quoted = BASE.replace("workers: ${WORKERS:-2}", 'workers: "${WORKERS:-2}"')
    path = write_policy(tmp_path, quoted, "p.yaml")
    assert any("server.workers must be an integer" in p for p in problems(path, {}))


def test_double_dollar_is_a_literal(tmp_path: Path) -> None:
    text = BASE.replace("${ENVIRONMENT:-development}", "$${HOME}x")
    path = write_policy(tmp_path, text, "p.yaml")
    assert load_policy(path, {"HOME": "/root"}).policy.environment == "${HOME}x"


def test_malformed_reference_is_an_error(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE.replace("${ENVIRONMENT:-development}", "${1BAD}"), "p.yaml")
    assert any("malformed ${...} reference" in p for p in problems(path, {}))


def test_extends_deep_merges_maps_and_replaces_lists(tmp_path: Path) -> None:
    write_policy(tmp_path, BASE, "base.yaml")
    child = write_policy(tmp_path, """\
extends: base.yaml
environment: production
server:
  timeouts: {header: 2s}
routes:
  - name: only
    match: {path_prefix: /}
""", "child.yaml")
    loaded = load_policy(child, {})
    policy = loaded.policy
    assert policy.environment == "production"
    assert policy.server.timeouts.header == 2.0  # overridden
    assert policy.server.timeouts.idle == 60.0  # kept from the base
    assert policy.server.listen.port == 8080  # kept from the base
    assert [r.name for r in policy.routes] == ["only"]  # lists replace
    assert policy.source_files == (str(tmp_path / "base.yaml"), str(child))


def test_extends_chains(tmp_path: Path) -> None:
    write_policy(tmp_path, BASE, "base.yaml")
    write_policy(tmp_path, "extends: base.yaml\nenvironment: staging\n", "mid.yaml")
    top = write_policy(tmp_path, "extends: mid.yaml\nserver: {workers: 3}\n", "top.yaml")
    policy = load_policy(top, {}).policy
    assert (policy.environment, policy.server.workers) == ("staging", 3)
    assert len(policy.source_files) == 3


def test_extends_cycle_is_an_error_at_the_closing_extends(tmp_path: Path) -> None:
    a = write_policy(tmp_path, "extends: b.yaml\n" + BASE, "a.yaml")
    b = write_policy(tmp_path, "extends: a.yaml\nenvironment: x\n", "b.yaml")
    found = problems(a, {})
    assert len(found) == 1
    assert found[0].startswith(f"{b}:1:10: extends cycle: {a} -> {b} -> {a}")


def test_extends_missing_file_is_an_error(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "extends: nope.yaml\n" + BASE, "p.yaml")
    assert "no such policy file" in problems(path, {})[0]


def test_errors_in_an_extended_file_name_that_file(tmp_path: Path) -> None:
    base = write_policy(tmp_path, BASE.replace("header: 5s", "header: soon"), "base.yaml")
    child = write_policy(tmp_path, "extends: base.yaml\nenvironment: prod\n", "child.yaml")
    assert problems(child, {}) == [
        f"{base}:6:22: server.timeouts.header: 'soon' is not a duration "
        "(examples: 500ms, 1s, 15m, 24h, 1h30m)"]


def test_syntax_error_in_an_extended_file_names_that_file(tmp_path: Path) -> None:
    base = write_policy(tmp_path, "version: [1\n", "base.yaml")
    child = write_policy(tmp_path, "extends: base.yaml\n", "child.yaml")
    assert problems(child, {})[0].startswith(f"{base}:")


def test_duplicate_keys_are_errors_in_nested_mappings(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE.replace("  workers: ${WORKERS:-2}\n",
                                                  "  workers: 1\n  workers: 2\n"), "p.yaml")
    assert any(p.startswith(f"{path}:6:3: duplicate key 'workers'") for p in problems(path, {}))


def test_digest_changes_with_any_file_of_the_chain(tmp_path: Path) -> None:
    base = write_policy(tmp_path, BASE, "base.yaml")
    child = write_policy(tmp_path, "extends: base.yaml\n", "child.yaml")
    first = load_policy(child, {}).document.digest
    base.write_text(BASE.replace("5s", "6s"))
    assert load_policy(child, {}).document.digest != first


def test_empty_required_variable_is_an_error(tmp_path: Path) -> None:
    text = BASE.replace("${ENVIRONMENT:-development}", "${ENVIRONMENT}")
    path = write_policy(tmp_path, text, "p.yaml")
    assert "environment variable ENVIRONMENT is empty" in problems(path, {"ENVIRONMENT": ""})[0]


def test_a_control_character_is_a_syntax_error_with_its_position(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "version: 1\nenvironment: a\x00b\n", "p.yaml")
    assert problems(path, {}) == [
        f"{path}:2:15: YAML syntax: character U+0000 is not allowed in YAML"]


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + "bogus: &loop [1, *loop]\n", "p.yaml")
    assert any("recursive YAML alias" in p for p in problems(path, {}))


@pytest.mark.parametrize("tagged", ["workers: !!int abc", "workers: !!bool maybe"])
def test_explicit_tags_that_do_not_parse_are_errors(tmp_path: Path, tagged: str) -> None:
    path = write_policy(tmp_path, BASE.replace("workers: ${WORKERS:-2}", tagged), "p.yaml")
    assert any(p.startswith(f"{path}:5:") for p in problems(path, {}))


def test_absurd_nesting_is_a_policy_error(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "version: " + "[" * 1500 + "]" * 1500 + "\n", "p.yaml")
    assert problems(path, {}) == [f"{path}:1:1: YAML nested too deeply"]
