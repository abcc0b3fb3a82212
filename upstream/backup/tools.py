"""Running PostgreSQL's client programs (pg_dump, pg_restore, psql from the pgserver package:
version 16) and small SQL helpers on the maintenance connection."""

from __future__ import annotations

import asyncio
import gzip
import logging
from pathlib import Path

import asyncpg

from upstream import db, embedded
from upstream.backup import EXIT_FAILED, BackupError

log = logging.getLogger("upstream.backup")


def program(name: str) -> str:
    return str(embedded.bin_dir() / name)


async def run(args: list[str], *, stdin_path: Path | None = None,
              gunzip: bool = False) -> str:
    """Run a client program; raise BackupError with its last error line if it fails.
    With `gunzip`, `stdin_path` is decompressed into its standard input."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE if stdin_path else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    feeder = None
    if stdin_path is not None:
        feeder = asyncio.create_task(_feed(proc, stdin_path, gunzip))
    stdout, stderr = await proc.communicate()
    if feeder is not None:
        try:
            await feeder
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise BackupError(f"{stdin_path.name}: cannot be read: {exc}") from None
    if proc.returncode != 0:
        lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        error = next((line for line in lines if "error" in line.lower()),
                     lines[-1] if lines else f"exit {proc.returncode}")
        raise BackupError(f"{Path(args[0]).name} failed: {error.strip()}", EXIT_FAILED)
    return stdout.decode(errors="replace")


async def _feed(proc: asyncio.subprocess.Process, path: Path, gunzip: bool) -> None:
    assert proc.stdin is not None
    opener = gzip.open if gunzip else open
    try:
        with opener(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()


async def connect(url: str, database: str | None = None) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(db.libpq_url(url, database), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BackupError(f"cannot connect to the database: {exc}") from None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact row counts of every table in the public schema."""
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                              " ORDER BY tablename")
    return {f"public.{t['tablename']}": await conn.fetchval(
        f"SELECT count(*) FROM public.{quote_ident(t['tablename'])}") for t in tables}


async def drop_database(maintenance: asyncpg.Connection, name: str) -> None:
    await maintenance.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    await maintenance.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


async def restore_into(url: str, backup_path: Path, fmt: str, database: str) -> None:
    """Load a dump into an existing empty database, in one transaction, stopping at the
    first error."""
    target = db.libpq_url(url, database)
    if fmt == "plain":
        await run([program("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                   "-d", target, "-f", "-"], stdin_path=backup_path, gunzip=True)
    else:
        await run([program("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                   "--single-transaction", "-d", target, str(backup_path)])
