"""`backup create`: pg_dump in one snapshot with the manifest's row counts, written atomically.

The row counts and the dump come from the same exported snapshot (a REPEATABLE READ transaction
kept open while pg_dump runs with --snapshot), so the manifest describes exactly what the dump
holds even while writers run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from upstream import __version__, db
from upstream.backup import BackupError
from upstream.backup.catalog import Backup, sha256_file, write_atomically
from upstream.backup.tools import connect, program, run, table_counts
from upstream.schema import current_revision

log = logging.getLogger("upstream.backup")


async def _dump_plain(args: list[str], tmp: Path) -> None:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    with gzip.open(tmp, "wb", compresslevel=6) as out:
        while chunk := await proc.stdout.read(1 << 20):
            await asyncio.to_thread(out.write, chunk)
    await proc.wait()
    if proc.returncode != 0:
        error = (await stderr_task).decode(errors="replace").strip().splitlines()
        raise BackupError(f"pg_dump failed: {error[-1] if error else proc.returncode}")


async def create_backup(url: str, backup_dir: Path, fmt: str = "custom") -> Backup:
    """Dump the database into `backup_dir`; returns the complete backup."""
    started = time.monotonic()
    backup_dir.mkdir(parents=True, exist_ok=True)
    database = db.database_name(url)
    now = datetime.now(UTC)
    name = f"{database}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    filename = f"{name}.dump" if fmt == "custom" else f"{name}.sql.gz"
    final = backup_dir / filename
    tmp = backup_dir / f".{filename}.partial"
    conn = await connect(url)
    try:
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        revision = await current_revision(conn)
        counts = await table_counts(conn)
        server_version = await conn.fetchval("SHOW server_version")
        args = [program("pg_dump"), "--snapshot", snapshot, "-d", db.libpq_url(url)]
        try:
            if fmt == "custom":
                await run([*args, "-Fc", "-f", str(tmp)])
            else:
                await _dump_plain([*args, "-Fp", "--no-owner", "--no-privileges"], tmp)
        finally:
            await tx.rollback()
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        digest = await asyncio.to_thread(sha256_file, tmp)
        size = tmp.stat().st_size
        tmp.rename(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        await conn.close()
    write_atomically(backup_dir / f"{filename}.sha256", f"{digest}  {filename}\n".encode())
    manifest = {
        "manifest_version": 1, "name": name, "file": filename, "format": fmt,
        "created_at": now.isoformat(), "database": database, "server_version": server_version,
        "schema_revision": revision, "size": size, "sha256": digest,
        "row_counts": counts, "duration_s": round(time.monotonic() - started, 3),
        "tool": f"upstream {__version__}",
    }
    write_atomically(backup_dir / f"{name}.json",
                     (json.dumps(manifest, indent=2) + "\n").encode())
    log.info("backup created: %s (%d bytes, %s rows, revision %s) in %.2fs", filename, size,
             sum(counts.values()), revision, manifest["duration_s"])
    return Backup(name, backup_dir, manifest)



