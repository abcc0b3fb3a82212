"""`backup verify`: checksum, readability (pg_restore --list, or the whole gzip stream), then a
restore into a scratch database whose row counts and schema revision must match the manifest.
The scratch database is always dropped."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import secrets
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from upstream.backup import EXIT_REFUSED, BackupError
from upstream.backup.catalog import Backup, sha256_file, write_atomically
from upstream.backup.tools import (
    connect,
    drop_database,
    program,
    quote_ident,
    restore_into,
    run,
    table_counts,
)
from upstream.schema import current_revision

log = logging.getLogger("upstream.backup")
PLAIN_END = b"-- PostgreSQL database dump complete"


def _refuse(backup: Backup, why: str) -> BackupError:
    return BackupError(f"backup {backup.name} refused: {why}", EXIT_REFUSED)


def check_integrity(backup: Backup) -> None:
    """The file exists, has the manifest's size and sha256, and matches its sidecar."""
    m = backup.manifest
    for key in ("file", "format", "size", "sha256", "row_counts", "schema_revision",
                "database", "created_at"):
        if key not in m:
            raise _refuse(backup, f"the manifest has no {key!r}")
    if not backup.path.is_file():
        raise _refuse(backup, f"{backup.path.name} is missing")
    size = backup.path.stat().st_size
    if size != m["size"]:
        raise _refuse(backup, f"{backup.path.name} is {size} bytes, the manifest says "
                              f"{m['size']} (truncated or changed)")
    try:
        sidecar = backup.checksum_path.read_text().split()[0]
    except (OSError, IndexError):
        raise _refuse(backup, f"no checksum file {backup.checksum_path.name}") from None
    actual = sha256_file(backup.path)
    if actual != sidecar:
        raise _refuse(backup, f"checksum mismatch: {backup.path.name} has sha256 {actual[:12]}…,"
                              f" {backup.checksum_path.name} says {sidecar[:12]}… (corrupted)")
    if actual != m["sha256"]:
        raise _refuse(backup, "the manifest's sha256 does not match the file")


def _read_plain(backup: Backup) -> None:
    tail = b""
    with gzip.open(backup.path, "rb") as f:
        while chunk := f.read(1 << 20):
            tail = (tail + chunk)[-4096:]
    if PLAIN_END not in tail:
        raise EOFError("the SQL dump is incomplete")


async def check_readable(backup: Backup) -> None:
    try:
        if backup.format == "plain":
            await asyncio.to_thread(_read_plain, backup)
        else:
            await run([program("pg_restore"), "--list", str(backup.path)])
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _refuse(backup, f"the dump cannot be read: {exc}") from None
    except BackupError as exc:
        raise _refuse(backup, f"the dump cannot be read: {exc}") from None


async def compare_with_manifest(backup: Backup, url: str, database: str) -> None:
    conn = await connect(url, database)
    try:
        revision = await current_revision(conn)
        counts = await table_counts(conn)
    finally:
        await conn.close()
    m = backup.manifest
    if revision != m["schema_revision"]:
        raise _refuse(backup, f"restored schema revision {revision} but the manifest says "
                              f"{m['schema_revision']}")
    if counts != m["row_counts"]:
        diff = sorted(k for k in set(counts) | set(m["row_counts"])
                      if counts.get(k) != m["row_counts"].get(k))
        detail = ", ".join(f"{k}: {counts.get(k)} restored vs {m['row_counts'].get(k)}"
                           for k in diff)
        raise _refuse(backup, f"row counts differ from the manifest ({detail})")


async def verify_backup(backup: Backup, url: str) -> dict[str, Any]:
    """Verify fully; records the result next to the backup and returns it."""
    started = time.monotonic()
    result: dict[str, Any] = {"ok": False, "verified_at": datetime.now(UTC).isoformat()}
    try:
        check_integrity(backup)
        await check_readable(backup)
        scratch = f"{backup.manifest['database'][:30]}_verify_{secrets.token_hex(4)}"
        maintenance = await connect(url, "postgres")
        try:
            await maintenance.execute(f"CREATE DATABASE {quote_ident(scratch)}")
            try:
                await restore_into(url, backup.path, backup.format, scratch)
                await compare_with_manifest(backup, url, scratch)
            except BackupError as exc:
                if exc.exit_code != EXIT_REFUSED:
                    raise _refuse(backup, f"it does not restore: {exc}") from None
                raise
            finally:
                await drop_database(maintenance, scratch)
        finally:
            await maintenance.close()
    except BackupError as exc:
        result["message"] = str(exc)
        write_atomically(backup.verify_path, json.dumps(result).encode())
        raise
    result.update(ok=True, message="verified", duration_s=round(time.monotonic() - started, 3))
    write_atomically(backup.verify_path, json.dumps(result).encode())
    log.info("backup verified: %s (checksum, restore into a scratch database, %d row counts,"
             " revision %s) in %.2fs", backup.name, len(backup.manifest["row_counts"]),
             backup.manifest["schema_revision"], result["duration_s"])
    return result



