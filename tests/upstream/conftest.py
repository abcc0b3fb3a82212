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


def bearer(role: str = "admin", username: str | None = None, minutes: int = 5) -> dict:
    token = issue_token(SECRET, username or role, role, minutes)
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer("admin")
OPERATOR = bearer("operator")
