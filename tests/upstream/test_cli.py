"""The command line as an operator uses it: the embedded default database shared by every
command, users, settings errors as one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.support.app import app_env, run_app, serving
from tests.support.processes import ROOT, free_port, stop, wait_for_port
from tests.upstream.conftest import APP_ENV, settings_env
from upstream.settings import SettingsError, load_settings


@pytest.fixture
def short_tmp():
    """A folder outside pytest's tmp_path: PostgreSQL runs as another user (pgserver) and
    must traverse it, but pytest keeps /tmp/pytest-of-<user> at mode 0700 (and resets it when
    any pytest session starts)."""
    with tempfile.TemporaryDirectory(prefix="upt-") as folder:
        yield Path(folder)


@pytest.mark.integration
@pytest.mark.slow
def test_without_database_url_every_command_uses_the_same_embedded_server(short_tmp, cli):
    env = {"ENVIRONMENT": "development", "UPSTREAM_DATA_DIR": str(short_tmp / "data"),
           "BACKUP_DIR": str(short_tmp / "backups")}
    try:
        for args in (["migrate", "upgrade"], ["seed"], ["backup", "create"]):
            result = cli(args, env)
            assert result.returncode == 0, result.stderr
        # `serve` in its own process, with no DATABASE_URL either: it finds the same server.
        served_env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "upstream", "serve", "--port",
                                 str(port)], cwd=ROOT, env={**served_env, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc, timeout=30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as resp:
                assert json.load(resp) == {"status": "ready"}
            login = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/auth/login", method="POST",
                data=json.dumps({"username": "admin", "password": "admin-password"}).encode())
            with urllib.request.urlopen(login, timeout=10) as resp:
                assert json.load(resp)["token_type"] == "bearer"
        finally:
            stop(proc)
        listed = cli(["backup", "list"], env)
        assert "11 rows" in listed.stdout and "rev 0002" in listed.stdout
    finally:
        assert cli(["db", "stop"], env).stdout.strip().endswith("stopped")


def test_users_add_reads_the_password_from_stdin_and_refuses_duplicates(database_url, cli):
    env = settings_env(database_url)
    added = cli(["users", "add", "carol", "--role", "operator", "--password-stdin"], env,
                stdin="a-long-password\n")
    assert added.returncode == 0, added.stderr
    again = cli(["users", "add", "carol", "--role", "admin", "--password-stdin"], env,
                stdin="another-password\n")
    assert again.returncode == 1
    assert again.stderr.strip() == "upstream: user carol already exists"
    short = cli(["users", "add", "dave", "--role", "admin", "--password-stdin"], env,
                stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_a_missing_secret_key_stops_production_at_start_up(database_url):
    env = {k: v for k, v in app_env(database_url, ENVIRONMENT="production").items()
           if k != "SECRET_KEY"}
    result = run_app(["serve", "--port", "1"], env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "upstream: SECRET_KEY must be set when ENVIRONMENT=production"


def test_development_generates_a_secret_key_and_says_so(tmp_path, seeded_database_url):
    env = {k: v for k, v in app_env(seeded_database_url).items() if k != "SECRET_KEY"}
    log = tmp_path / "serve.log"
    with serving(seeded_database_url, log, SECRET_KEY=""):
        pass
    assert "SECRET_KEY is not set: generated a random one" in log.read_text()
    assert env["ENVIRONMENT"] == "development"


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "not a url", "postgresql://h:5432/"])
def test_a_malformed_database_url_is_one_line(url, cli):
    result = cli(["migrate", "current"], {"DATABASE_URL": url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0]


def test_settings_read_the_plan_names():
    settings = load_settings({"DATABASE_URL": "postgresql://u:p@db:5432/app",
                              "ENVIRONMENT": "production", "SECRET_KEY": "s" * 40,
                              "JWT_EXPIRATION_MINUTES": "15", "BACKUP_DIR": "/b",
                              "RETENTION_DAYS": "7", "AWS_S3_BUCKET": "bk",
                              "RELEASE_VERSION": "2.3.4"})
    assert (settings.jwt_expiration_minutes, settings.retention_days, settings.s3_bucket,
            settings.release_version, str(settings.backup_dir)) == (15, 7, "bk", "2.3.4", "/b")
    with pytest.raises(SettingsError, match="at least 32 characters"):
        load_settings({"ENVIRONMENT": "production", "SECRET_KEY": "short"})
    with pytest.raises(SettingsError, match="JWT_EXPIRATION_MINUTES"):
        load_settings({"JWT_EXPIRATION_MINUTES": "soon"})
    assert load_settings({}).enable_metrics is True
    assert load_settings({"ENABLE_METRICS": "false"}).enable_metrics is False
    with pytest.raises(SettingsError, match="ENABLE_METRICS must be true or false"):
        load_settings({"ENABLE_METRICS": "maybe"})


@pytest.mark.integration
def test_the_application_imports_nothing_of_the_gateway():
    code = ("import sys, upstream.cli, upstream.api, upstream.backup.s3, upstream.backup.restore,"
            " upstream.backup.prune, upstream.seed, upstream.embedded; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
