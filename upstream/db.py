"""Database URLs and the SQLAlchemy async engine.

DATABASE_URL is accepted in the plan's form (`postgresql://user:pass@host:5432/db`, or
`?host=/socket/dir` for a Unix socket); which driver SQLAlchemy uses (asyncpg) is this module's
business. Tools that speak libpq (pg_dump, pg_restore, psql) and asyncpg get the plain form.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from upstream.settings import Settings, SettingsError


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception:
        raise SettingsError("DATABASE_URL is not a URL (postgresql://user:pass@host:5432/db)") \
            from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise SettingsError(f"DATABASE_URL must be a postgresql:// URL, got {parsed.drivername}")
    if not parsed.database:
        raise SettingsError("DATABASE_URL names no database")
    return parsed


def libpq_url(url: str, database: str | None = None) -> str:
    """The URL as libpq and asyncpg take it, optionally naming another database."""
    parsed = _parse(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    return _parse(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def database_name(url: str) -> str:
    return str(_parse(url).database)


def redacted(url: str) -> str:
    return _parse(url).render_as_string(hide_password=True)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's (started when needed)."""
    if settings.database_url:
        _parse(settings.database_url)
        return settings.database_url
    from upstream import embedded
    return embedded.start(settings.data_dir)


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    # pre_ping: after a restore swapped the database, pooled connections were terminated.
    return create_async_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=5,
                               pool_pre_ping=True, pool_recycle=1800)
