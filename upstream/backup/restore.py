"""`backup restore`: load a verified-sound backup into a new database, check it, then swap it in
by renaming; the previous database is kept under a dated name.

Order, and why the live database stays exactly as it was when anything fails:
1. integrity (checksum, size, manifest) and the schema revision (refused when newer than this
   code's migrations) are checked before anything is touched;
2. a session advisory lock (RESTORE_LOCK_KEY) is held for the whole restore: the API's /ready
   answers 503 while it is held, and a second restore refuses to start; it disappears with the
   process, so a killed restore leaves no lock behind;
3. the dump is loaded into `<db>_restore_<time>` and compared with the manifest (row counts,
   revision); a failure or a kill here touches only that new database;
4. the swap: connections to the live database are refused (ALLOW_CONNECTIONS false) and
   terminated, then both renames happen in one transaction, so either both happen or neither.
   If that transaction fails, connections are allowed again and the live database is unchanged.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from upstream import db
from upstream.backup import EXIT_REFUSED, BackupError
from upstream.backup.catalog import Backup
from upstream.backup.tools import connect, drop_database, quote_ident, restore_into
from upstream.backup.verify import check_integrity, check_readable, compare_with_manifest
from upstream.schema import is_newer_than_code

log = logging.getLogger("upstream.backup")
RESTORE_LOCK_KEY = 0x75707374  # also read by upstream/api/health.py


def check_restorable(backup: Backup) -> None:
    check_integrity(backup)
    revision = backup.manifest.get("schema_revision")
    if is_newer_than_code(revision):
        raise BackupError(f"backup {backup.name} refused: its schema revision {revision} is "
                          "newer than this code's migrations (upgrade the code first)",
                          EXIT_REFUSED)


async def restore_backup(backup: Backup, url: str) -> dict[str, Any]:
    """Restore `backup` over the database of `url`; returns what happened."""
    started = time.monotonic()
    check_restorable(backup)
    await check_readable(backup)
    live = db.database_name(url)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    incoming = f"{live[:40]}_restore_{stamp}"
    previous = f"{live[:40]}_pre_restore_{stamp}"
    maintenance = await connect(url, "postgres")
    try:
        if not await maintenance.fetchval("SELECT pg_try_advisory_lock($1)", RESTORE_LOCK_KEY):
            raise BackupError("another restore is running (advisory lock held)")
        if not await maintenance.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", live):
            raise BackupError(f"database {live} does not exist")
        await maintenance.execute(f"CREATE DATABASE {quote_ident(incoming)}")
        try:
            log.info("restoring %s into new database %s", backup.name, incoming)
            await restore_into(url, backup.path, backup.format, incoming)
            await compare_with_manifest(backup, url, incoming)
            await _swap(maintenance, live, incoming, previous)
        except BaseException:
            await drop_database(maintenance, incoming)
            raise
    finally:
        await maintenance.close()
    duration = round(time.monotonic() - started, 3)
    log.info("restored %s into %s in %.2fs; the previous database is kept as %s",
             backup.name, live, duration, previous)
    return {"database": live, "previous": previous, "duration_s": duration}


async def _swap(maintenance, live: str, incoming: str, previous: str) -> None:
    await maintenance.execute(f"ALTER DATABASE {quote_ident(live)} ALLOW_CONNECTIONS false")
    try:
        await maintenance.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()", live)
        for _ in range(100):  # terminated backends leave within moments
            if not await maintenance.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", live):
                break
            await maintenance.execute("SELECT pg_sleep(0.05)")
        async with maintenance.transaction():
            await maintenance.execute(
                f"ALTER DATABASE {quote_ident(live)} RENAME TO {quote_ident(previous)}")
            await maintenance.execute(
                f"ALTER DATABASE {quote_ident(incoming)} RENAME TO {quote_ident(live)}")
    except BaseException:
        await maintenance.execute(f"ALTER DATABASE {quote_ident(live)} ALLOW_CONNECTIONS true")
        raise
    await maintenance.execute(f"ALTER DATABASE {quote_ident(previous)} ALLOW_CONNECTIONS true")
