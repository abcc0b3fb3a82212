"""Fixtures of the demo application's tests: settings, a seeded database, an in-process client
(pytest-aiohttp) and tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import pytest_asyncio

from upstream.api import make_app
from upstream.auth import issue_token
from upstream.settings import Settings, load_settings

SECRET = "test-secret-key-of-enough-length-0123456789"


@pytest.fixture
def settings(tmp_path: Path, seeded: str) -> Settings:
    return dataclasses.replace(
        load_settings({"ENVIRONMENT": "test", "SECRET_KEY": SECRET,
                       "BACKUP_DIR": str(tmp_path / "backups")}),
        database_url=seeded)


@pytest.fixture
def seeded(seeded_database_url: str) -> str:
    return seeded_database_url


@pytest_asyncio.fixture
async def client(aiohttp_client, settings: Settings, seeded: str):
    return await aiohttp_client(make_app(settings, seeded))


def bearer(role: str = "admin", username: str | None = None, minutes: int = 24 * 60) -> dict:
    # Made when the tests are collected, which can be many minutes before they run.
    token = issue_token(SECRET, username or role, role, minutes)
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer("admin")
OPERATOR = bearer("operator")


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


# What the command line reads from the environment; cleared before each in-process run.
APP_ENV = ("DATABASE_URL", "ENVIRONMENT", "SECRET_KEY", "BACKUP_DIR", "UPSTREAM_DATA_DIR",
           "RETENTION_DAYS", "BACKUP_KEEP_LAST", "RELEASE_VERSION", "JWT_EXPIRATION_MINUTES",
           "AWS_S3_BUCKET", "AWS_S3_PREFIX", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
           "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def cli(monkeypatch, capsys):
    """`python -m upstream ARGS` in this process (the same `main()` the module runs), with
    exactly the given settings: returns its exit code and output."""
    import io
    import logging
    import sys

    from upstream.cli import main

    def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> CliResult:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        with monkeypatch.context() as m:
            for key in APP_ENV:
                m.delenv(key, raising=False)
            for key, value in env.items():
                m.setenv(key, value)
            m.setattr(sys, "stdin", io.StringIO(stdin or ""))
            capsys.readouterr()
            try:
                code = main(args)
            finally:
                root.handlers[:], root.level = handlers, level
            out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


def settings_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "ENVIRONMENT": "development", "SECRET_KEY": SECRET,
            **extra}
