"""The embedded PostgreSQL 16 (the `pgserver` package) used when DATABASE_URL is unset.

The server keeps its files under UPSTREAM_DATA_DIR/pg and listens on a Unix socket only, in that
same folder, so every command (serve, migrate, seed, backup) started in the same working
directory finds the same running server. It keeps running after the command that started it
exits; `python -m upstream db stop` stops it.

What we learned: pgserver runs initdb/pg_ctl as a dedicated system user `pgserver` when started
as root (PostgreSQL refuses to run as root), chowning the data folder to that user and opening
the permissions of its parent folders to traverse (chmod o+rx). Authentication is `trust` for the
`postgres` role over the socket. Its bin folder has pg_dump, pg_restore and psql, which the
backup tool uses for any server (client version 16).
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

DATABASE = "upstream"

log = logging.getLogger("upstream.embedded")


def bin_dir() -> Path:
    """The folder with pg_dump, pg_restore and psql (PostgreSQL 16, shipped by pgserver)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "pg"


def start(data_dir: Path, database: str = DATABASE) -> str:
    """Start (or find running) the embedded server; return a libpq URL of `database`, created
    when missing."""
    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
        log.info("embedded PostgreSQL: created database %s", database)
    return server.get_uri(database)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    pgdata = _pgdata(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "pgserver" if os.geteuid() == 0 else None
    subprocess.run([str(bin_dir() / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
                   check=True, capture_output=True, user=user)
    return True
