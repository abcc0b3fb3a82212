"""Hot reload: SIGHUP and file changes (including a ConfigMap-style symlink swap), the reload
counter, /config, `check --print`, and every worker reloading."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.client import request
from tests.support.metrics import value
from tests.support.processes import (
    gateway_cli,
    run_gateway,
    spawn_gateway,
    stop,
    wait_for_port,
    wait_until,
    write_gateway_policy,
)

FAST_WATCH = "watch_interval: 100ms"
ONLY = "  - name: only\n    match: {path_prefix: /only/}"


def admin_text(gw, path: str) -> str:
    with urllib.request.urlopen(gw.admin_url + path, timeout=5) as resp:
        return resp.read().decode()


def test_a_changed_file_is_reloaded_without_a_signal(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra=FAST_WATCH)
    assert request(gw.port, "GET", "/x").status == 200
    text = gw.config.read_text()
    gw.config.write_text(text.replace("path_prefix: /", "path_prefix: /only/"))
    wait_until(lambda: request(gw.port, "GET", "/x").status == 404)
    assert request(gw.port, "GET", "/only/x").status == 200
    assert value(gw, "gateway_config_reloads_total", result="success") == 1


def test_an_invalid_change_keeps_the_running_policy_and_counts_a_failure(
    gateway_factory, upstream
) -> None:
    gw = gateway_factory(upstream.url, server_extra=FAST_WATCH)
    gw.config.write_text(gw.config.read_text().replace("version: 1", "version: 1\nbogus: 1"))
    wait_until(lambda: value(gw, "gateway_config_reloads_total", result="failure") == 1)
    assert request(gw.port, "GET", "/x").status == 200
    assert "unknown key 'bogus'" in gw.log_text()


def test_same_content_rewritten_is_not_a_reload(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, server_extra=FAST_WATCH)
    text = gw.config.read_text()
    gw.config.write_text(text)  # new mtime, same bytes
    gw.config.write_text(text.replace("path_prefix: /", "path_prefix: /only/"))
    wait_until(lambda: request(gw.port, "GET", "/x").status == 404)
    assert value(gw, "gateway_config_reloads_total", result="success") == 1


def test_configmap_symlink_swap_is_noticed(tmp_path: Path, upstream) -> None:
    # Kubernetes mounts: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/ (swapped)
    written, port, admin_port = write_gateway_policy(tmp_path, upstream.url,
                                                     server_extra=FAST_WATCH)
    text = written.read_text()
    mount = tmp_path / "mount"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "policy.yaml").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    gw = run_gateway(mount / "policy.yaml", port, admin_port, tmp_path / "mount.log")
    try:
        assert _status(gw.port, "/x") == 200
        (mount / "..v2").mkdir()
        (mount / "..v2" / "policy.yaml").write_text(
            text.replace("path_prefix: /", "path_prefix: /only/"))
        (mount / "..data_tmp").symlink_to("..v2")
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap
        wait_until(lambda: _status(gw.port, "/x") == 404)
        assert _status(gw.port, "/only/x") == 200
    finally:
        stop(gw.proc)


def _status(port: int, path: str) -> int | None:
    try:
        return request(port, "GET", path, timeout=2).status
    except OSError:
        return None


def test_a_change_to_an_extended_file_is_reloaded(tmp_path: Path, upstream) -> None:
    base, port, admin_port = write_gateway_policy(tmp_path, upstream.url,
                                                  server_extra=FAST_WATCH)
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\nenvironment: child\n")
    gw = run_gateway(child, port, admin_port, tmp_path / "child.log")
    try:
        assert _status(gw.port, "/x") == 200
        base.write_text(base.read_text().replace("path_prefix: /", "path_prefix: /only/"))
        wait_until(lambda: _status(gw.port, "/x") == 404)
        # the base file's routes took effect, under the child's own settings
        assert _status(gw.port, "/only/x") == 200
        shown = json.loads(admin_text(gw, "/config"))
        assert shown["source_files"] == [str(base), str(child)]
        assert shown["policy"]["environment"] == "child"
        assert value(gw, "gateway_config_reloads_total", result="success") == 1
    finally:
        stop(gw.proc)


def test_every_worker_reloads(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, args=("--workers", "2"), server_extra="watch: false")
    supervisor = psutil.Process(gw.proc.pid)
    wait_until(lambda: len(supervisor.children()) == 2)
    gw.config.write_text(gw.config.read_text().replace("path_prefix: /", "path_prefix: /only/"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: gw.log_text().count("policy reloaded (SIGHUP)") == 2)
    # new connections land on either worker; none may still answer with the old policy
    assert {request(gw.port, "GET", "/x").status for _ in range(40)} == {404}


def test_sighup_while_workers_start_reloads_them_instead_of_killing_them(
    tmp_path: Path, upstream
) -> None:
    # SIGHUP's default action is to terminate: a worker that got it before its event loop
    # had a handler used to die and be restarted; now it is held pending until then
    config, port, _ = write_gateway_policy(tmp_path, upstream.url, server_extra="watch: false")
    log = tmp_path / "gateway.log"
    proc = spawn_gateway(config, log, args=("--workers", "2"))
    try:
        wait_until(lambda: "started 2 workers" in log.read_text())
        workers = {c.pid for c in psutil.Process(proc.pid).children()}
        proc.send_signal(signal.SIGHUP)  # forwarded within 0.1 s, while the workers import
        wait_until(lambda: log.read_text().count("policy reloaded (SIGHUP)") == 2)
        assert "exited with" not in log.read_text()
        assert {c.pid for c in psutil.Process(proc.pid).children()} == workers
        wait_for_port(port, proc)
        assert request(port, "GET", "/x").status == 200
    finally:
        stop(proc)


def test_config_endpoint_shows_the_running_policy_redacted(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url)
    doc = json.loads(admin_text(gw, "/config"))
    assert doc["policy"]["upstream"]["url"] == upstream.url
    assert doc["source_files"] == [str(gw.config)]
    assert len(doc["digest"]) == 64 and doc["loaded_at"].endswith("+00:00")


@pytest.mark.integration
def test_check_print_shows_the_merged_interpolated_policy_with_secrets_redacted(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("version: 1\nupstream: {url: 'http://127.0.0.1:8000'}\n"
                    "routes: [{name: all, match: {path_prefix: /}}]\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nenvironment: ${ENVIRONMENT:-dev}\n")
    result = gateway_cli("check", "--config", str(child), "--print",
                         env={"ENVIRONMENT": "staging"})
    assert result.returncode == 0, result.stderr
    assert "environment: staging" in result.stdout
    assert "url: http://127.0.0.1:8000" in result.stdout
    assert "extends" not in result.stdout


def test_redaction_of_url_passwords_and_secret_keys() -> None:
    from gateway.config.render import redact
    assert redact({"url": "redis://user:s3cret@h:6379/0", "dsn": "https://k@sentry/1",
                   "plain": "http://h/x", "token": ""}) == {
        "url": "redis://user:***@h:6379/0", "dsn": "***", "plain": "http://h/x", "token": ""}
