"""A real PostgreSQL 16 for the tests (the `pgserver` package, as the application embeds it):
one server per test session on a temporary folder, a database per test cloned from a migrated
template (CREATE DATABASE ... TEMPLATE is a file copy: milliseconds). With TEST_DATABASE_URL
set, the tests use that server instead (they create and drop their own databases on it)."""

from __future__ import annotations

import os
import secrets
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path


def _bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@dataclass
class Postgres:
    pgdata: Path | None  # None: a server the tests did not start (TEST_DATABASE_URL)
    uri_template: str  # with {db}

    @classmethod
    def external(cls, url: str) -> Postgres:
        """A server given by URL (any database on it; the user needs CREATEDB)."""
        from upstream.db import libpq_url
        return cls(None, libpq_url(url, "DBNAME").replace("DBNAME", "{db}"))

    def url(self, database: str) -> str:
        return self.uri_template.format(db=database)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(_bin() / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", sql],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.psql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        """Drop it and what a restore left beside it (`<name>_pre_restore_<time>`, ...)."""
        family = self.psql("SELECT datname FROM pg_database WHERE starts_with(datname, "
                           f"'{name}_')").split()
        for db in [name, *family]:
            self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def stop(self) -> None:
        if self.pgdata is None:
            return
        user = "pgserver" if os.geteuid() == 0 else None
        subprocess.run([str(_bin() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m",
                        "immediate", "stop"], capture_output=True, user=user, timeout=60)


def start_postgres(folder: Path) -> Postgres:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        server = pgserver.get_server(folder / "pg", cleanup_mode=None)
    uri = server.get_uri("DBNAME").replace("DBNAME", "{db}")
    pg = Postgres(folder / "pg", uri)
    # A throwaway server: durability is not what the tests check, speed is.
    for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
        pg.psql(f"ALTER SYSTEM SET {setting}")
    pg.psql("SELECT pg_reload_conf()")
    return pg


def migrated_template(pg: Postgres) -> str:
    """A database at the code's head revision, to clone per test."""
    from upstream import schema
    name = pg.create_database()
    schema.upgrade(pg.url(name))
    return name
