"""Hot reload: SIGHUP and file changes (including a ConfigMap-style symlink swap), the reload
counter, /config, `check --print`, and every worker reloading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from tests.support.client import request
from tests.support.metrics import value
from tests.support.processes import (
    DEFAULT_ROUTES,
    POLICY_TEMPLATE,
    ROOT,
    free_port,
    start_gateway,
    stop,
    wait_for_port,
    wait_until,
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
    first = start_gateway(tmp_path, upstream.url, server_extra=FAST_WATCH)
    stop(first.proc)
    text = first.config.read_text()
    mount = tmp_path / "mount"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "policy.yaml").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                             str(mount / "policy.yaml")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _status(first.port, "/x") == 200)
        (mount / "..v2").mkdir()
        (mount / "..v2" / "policy.yaml").write_text(
            text.replace("path_prefix: /", "path_prefix: /only/"))
        (mount / "..data_tmp").symlink_to("..v2")
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap
        wait_until(lambda: _status(first.port, "/x") == 404)
        assert _status(first.port, "/only/x") == 200
    finally:
        stop(proc)


def _status(port: int, path: str) -> int | None:
    try:
        return request(port, "GET", path, timeout=2).status
    except OSError:
        return None


def test_a_change_to_an_extended_file_is_reloaded(tmp_path: Path, upstream) -> None:
    gw = start_gateway(tmp_path, upstream.url, server_extra=FAST_WATCH)
    stop(gw.proc)
    base = gw.config
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\nenvironment: child\n")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(child)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _status(gw.port, "/x") == 200)
        base.write_text(base.read_text().replace("path_prefix: /", "path_prefix: /only/"))
        wait_until(lambda: _status(gw.port, "/x") == 404)
    finally:
        stop(proc)


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
    port, admin_port = free_port(), free_port()
    config, log = tmp_path / "policy.yaml", tmp_path / "gateway.log"
    config.write_text(POLICY_TEMPLATE.format(
        port=port, admin_port=admin_port, server_extra="  watch: false", upstream_key="url",
        upstream=upstream.url, upstream_extra="", routes=DEFAULT_ROUTES, top_extra=""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config), "--workers", "2"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
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


def test_check_print_shows_the_merged_interpolated_policy_with_secrets_redacted(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("version: 1\nupstream: {url: 'http://127.0.0.1:8000'}\n"
                    "routes: [{name: all, match: {path_prefix: /}}]\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nenvironment: ${ENVIRONMENT:-dev}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(child),
                             "--print"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "ENVIRONMENT": "staging"})
    assert result.returncode == 0, result.stderr
    assert "environment: staging" in result.stdout
    assert "url: http://127.0.0.1:8000" in result.stdout
    assert "extends" not in result.stdout


def test_redaction_of_url_passwords_and_secret_keys() -> None:
    from gateway.config.render import redact
    assert redact({"url": "redis://user:s3cret@h:6379/0", "dsn": "https://k@sentry/1",
                   "plain": "http://h/x", "token": ""}) == {
        "url": "redis://user:***@h:6379/0", "dsn": "***", "plain": "http://h/x", "token": ""}
