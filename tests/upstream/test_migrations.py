"""Migrations against a real PostgreSQL: pytest-alembic's checks (single head, upgrade from
empty, up/down consistency, models match migrations), plain `alembic check` and offline SQL,
and a downgrade and upgrade that keep the data of the later revision."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from pytest_alembic import tests as alembic_tests
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.processes import ROOT
from tests.upstream.dbrows import all_rows
from upstream import schema
from upstream.db import sqlalchemy_url


@pytest.fixture
def empty_database(postgres):
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def alembic_config():
    from pytest_alembic.config import Config
    return Config.from_raw_config(schema.alembic_config())


@pytest.fixture
def alembic_engine(empty_database):
    # No pool: pytest-alembic runs each step in its own event loop (asyncio.run).
    return create_async_engine(sqlalchemy_url(empty_database), poolclass=NullPool)


def test_single_head_revision(alembic_runner):
    alembic_tests.test_single_head_revision(alembic_runner)


def test_upgrade_from_empty_to_head(alembic_runner):
    alembic_tests.test_upgrade(alembic_runner)


def test_up_down_consistency(alembic_runner):
    alembic_tests.test_up_down_consistency(alembic_runner)


def test_models_match_migrations(alembic_runner):
    alembic_tests.test_model_definitions_match_ddl(alembic_runner)


def alembic(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url:
        env["DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_plain_alembic_upgrades_and_checks_from_the_repository_root(empty_database):
    upgraded = alembic("upgrade", "head", url=empty_database)
    assert upgraded.returncode == 0, upgraded.stderr
    checked = alembic("check", url=empty_database)
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    current = alembic("current", url=empty_database)
    assert schema.head_revision() in current.stdout


@pytest.mark.integration
def test_offline_sql_needs_no_database():
    result = alembic("upgrade", "head", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE campaigns" in result.stdout
    assert "UPDATE campaigns SET updated_at = created_at" in result.stdout
    assert "ALTER TABLE campaigns ALTER COLUMN updated_at SET NOT NULL" in result.stdout


def test_the_data_migration_backfills_updated_at_and_a_round_trip_keeps_the_data(
        seeded_database_url):
    url = seeded_database_url
    before = asyncio.run(all_rows(url))
    schema.downgrade(url, "0001")
    downgraded = asyncio.run(all_rows(url))
    assert len(downgraded["campaigns"][0]) == len(before["campaigns"][0]) - 1  # no updated_at
    schema.upgrade(url)
    after = asyncio.run(all_rows(url))
    # Every row is back; updated_at was backfilled from created_at (columns 3 and 4).
    assert [r[:4] for r in after["campaigns"]] == [r[:4] for r in before["campaigns"]]
    assert all(r[4] == r[3] for r in after["campaigns"])
    assert {k: v for k, v in after.items() if k != "campaigns"} == {
        k: v for k, v in before.items() if k != "campaigns"}


def test_downgrade_to_base_and_upgrade_again_gives_an_empty_schema_at_head(
        seeded_database_url):
    schema.downgrade(seeded_database_url, "base")
    schema.upgrade(seeded_database_url)
    rows = asyncio.run(all_rows(seeded_database_url))
    assert rows["alembic_version"] == [(schema.head_revision(),)]
    assert rows["campaigns"] == rows["calls"] == rows["users"] == []
