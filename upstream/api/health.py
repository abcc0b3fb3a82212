"""GET /health (the process runs), /ready (database answers, schema at head, no restore) and
/metrics."""

from __future__ import annotations

import asyncio
import platform

from aiohttp import web
from sqlalchemy import text

from upstream.api.keys import ENGINE, HEAD, METRICS, SETTINGS
from upstream.backup.restore import RESTORE_LOCK_KEY  # held while a restore runs


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response({"status": "healthy", "version": settings.release_version,
                              "python": platform.python_version(),
                              "environment": settings.environment})


async def _readiness(request: web.Request) -> str | None:
    async with request.app[ENGINE].connect() as conn:
        restoring = (await conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = 0 AND objid = :key AND objsubid = 1"),
            {"key": RESTORE_LOCK_KEY})).scalar()
        if restoring:
            return "a restore is in progress"
        exists = (await conn.execute(text(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL"))).scalar()
        revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                    ).scalar() if exists else None
    head = request.app[HEAD]
    if revision != head:
        return f"schema revision {revision or 'none'} is not the code's head {head}" \
               " (run: python -m upstream migrate upgrade)"
    return None


async def ready(request: web.Request) -> web.Response:
    try:
        reason = await asyncio.wait_for(_readiness(request), 3)
    except Exception as exc:
        reason = f"database unavailable: {type(exc).__name__}"
    if reason:
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return request.app[METRICS].render()
