"""Alembic environment (async): the URL comes from DATABASE_URL or the embedded server.

`config.attributes["url"]` (set by upstream.schema and the tests) wins over both. Autogenerate
and `alembic check` compare types and server defaults.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from upstream.db import resolve_database_url, sqlalchemy_url
from upstream.models import Base
from upstream.settings import load_settings

config = context.config
target_metadata = Base.metadata
OPTIONS = {"target_metadata": target_metadata, "compare_type": True,
           "compare_server_default": True}


def _url(offline: bool) -> str:
    url = config.attributes.get("url")
    if url:
        return url
    settings = load_settings()
    if offline and not settings.database_url:
        return "postgresql://localhost/upstream"  # only the dialect matters for --sql
    return resolve_database_url(settings)


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(_url(offline=True)), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(engine: AsyncEngine | None = None) -> None:
    own = engine is None
    engine = engine or create_async_engine(sqlalchemy_url(_url(offline=False)))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        if own:
            await engine.dispose()


def run_migrations_online() -> None:
    # pytest-alembic hands over its engine (async) or a connection (inside run_sync).
    connectable = config.attributes.get("connection")
    if connectable is None:
        asyncio.run(run_async_migrations())
    elif isinstance(connectable, AsyncEngine):
        asyncio.run(run_async_migrations(connectable))
    else:
        _run_sync(connectable)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
