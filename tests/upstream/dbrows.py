"""Reading a database row by row, to compare states exactly."""

from __future__ import annotations

import asyncpg

from upstream.db import libpq_url


async def all_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table in the public schema, in primary-key order."""
    conn = await asyncpg.connect(libpq_url(url))
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {t: [tuple(r) for r in await conn.fetch(f'SELECT * FROM "{t}" ORDER BY 1')]
                for t in tables}
    finally:
        await conn.close()


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def databases_like(url: str, prefix: str) -> set[str]:
    conn = await asyncpg.connect(libpq_url(url, "postgres"))
    try:
        return {r["datname"] for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)}
    finally:
        await conn.close()


CHANGES = (
    "UPDATE campaigns SET name = 'Renamed', status = 'completed' WHERE id = 1",
    "DELETE FROM calls WHERE id = 2",
    "DELETE FROM users WHERE username = 'operator'",
    "INSERT INTO campaigns (name) VALUES ('Added after the backup')",
)
