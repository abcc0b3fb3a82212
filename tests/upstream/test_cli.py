"""The command line as an operator uses it: the embedded default database shared by every
command, users, settings errors as one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.support.app import app_env, run_app, serving
from upstream.settings import SettingsError, load_settings


def env_without_database(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    return {**env, "ENVIRONMENT": "development", **extra}


def test_without_database_url_every_command_uses_the_same_embedded_server(tmp_path):
    env = env_without_database(UPSTREAM_DATA_DIR=str(tmp_path / "data"),
                               BACKUP_DIR=str(tmp_path / "backups"))
    try:
        for args in (["migrate", "upgrade"], ["seed"], ["backup", "create"]):
            result = run_app(args, env)
            assert result.returncode == 0, result.stderr
        url = run_app(["db", "url"], env).stdout.strip().splitlines()[-1]
        assert str(tmp_path / "data") in url or "host=" in url
        log = tmp_path / "serve.log"
        with serving(url, log) as base:  # the API on the same server, found by its URL
            login = urllib.request.Request(
                base + "/api/auth/login", method="POST",
                data=json.dumps({"username": "admin", "password": "admin-password"}).encode())
            with urllib.request.urlopen(login, timeout=10) as resp:
                assert json.load(resp)["token_type"] == "bearer"
        listed = run_app(["backup", "list"], env)
        assert "11 rows" in listed.stdout and "rev 0002" in listed.stdout
    finally:
        assert run_app(["db", "stop"], env).stdout.strip().endswith("stopped")


def test_users_add_reads_the_password_from_stdin_and_refuses_duplicates(database_url):
    env = app_env(database_url)
    added = run_app(["users", "add", "carol", "--role", "operator", "--password-stdin"], env,
                    stdin="a-long-password\n")
    assert added.returncode == 0, added.stderr
    again = run_app(["users", "add", "carol", "--role", "admin", "--password-stdin"], env,
                    stdin="another-password\n")
    assert again.returncode == 1
    assert again.stderr.strip() == "upstream: user carol already exists"
    short = run_app(["users", "add", "dave", "--role", "admin", "--password-stdin"], env,
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
def test_a_malformed_database_url_is_one_line(url):
    result = run_app(["migrate", "current"], {**os.environ, "DATABASE_URL": url})
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
    with pytest.raises(SettingsError, match="JWT_EXPIRATION_MINUTES"):
        load_settings({"JWT_EXPIRATION_MINUTES": "soon"})
