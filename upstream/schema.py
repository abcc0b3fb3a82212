"""Schema revisions: the code's head, the database's current one, and the Alembic commands.

`python -m upstream migrate ...` builds its Alembic configuration here (no alembic.ini needed),
so it works from any directory; plain `alembic` from the repository root reads alembic.ini and
reaches the same env.py.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.attributes["url"] = url
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several heads: {heads}"
    return heads[0]


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def is_newer_than_code(revision: str | None) -> bool:
    """A revision this code does not know comes from newer code."""
    return revision is not None and revision not in known_revisions()


async def current_revision(conn: asyncpg.Connection) -> str | None:
    """The revision stamped in a database (an asyncpg connection); None when unversioned."""
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    if not exists:
        return None
    return await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")


def upgrade(url: str, revision: str = "head", sql: bool = False) -> None:
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> None:
    command.current(alembic_config(url), verbose=False)


def history() -> None:
    command.history(alembic_config(), verbose=False)


def check(url: str) -> None:
    command.check(alembic_config(url))
