"""The API application: routes, middlewares (metrics, errors as problem+json, JWT) and the
lifecycle (engine and event listener opened at start-up, closed at shutdown)."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker

from upstream import auth, db
from upstream.api import auth_routes, calls, campaigns, health
from upstream.api.keys import DATABASE_URL, ENGINE, HEAD, HUB, METRICS, SESSIONS, SETTINGS
from upstream.events import EventHub
from upstream.metrics import Metrics
from upstream.problems import Problem, problem_response
from upstream.schema import head_revision
from upstream.settings import Settings

log = logging.getLogger("upstream.api")


def _route_name(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


@web.middleware
async def observe(request: web.Request, handler):
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[METRICS].observe(_route_name(request), request.method, status, started)


@web.middleware
async def problems(request: web.Request, handler):
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {404: "No such resource.", 405: f"{request.method} is not allowed here.",
                  413: "The request body is too large."}.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, detail, headers)
    except (OperationalError, InterfaceError, OSError) as exc:
        log.warning("database unavailable: %s", exc)
        return _unavailable()
    except DBAPIError as exc:
        if exc.connection_invalidated or _unreachable(exc):
            log.warning("database unavailable: %s", exc.orig)
            return _unavailable()
        log.exception("database error")
        return problem_response(500, "Internal error.")


# SQLSTATEs that mean "no usable connection" rather than a bug: connection exceptions (08),
# shutdown or not accepting connections yet (57P), too many connections (53300), the database
# missing or refusing connections (3D000, 55000: what a restore's swap looks like from here).
_UNREACHABLE = ("08", "57P", "53300", "3D000", "55000")


def _unreachable(exc: DBAPIError) -> bool:
    return str(getattr(exc.orig, "sqlstate", "") or "").startswith(_UNREACHABLE)


def _unavailable() -> web.Response:
    return problem_response(503, "The database is unavailable; retry later.",
                            {"Retry-After": "5"})


def make_app(settings: Settings, database_url: str) -> web.Application:
    app = web.Application(middlewares=[observe, problems, auth_routes.require_token],
                          client_max_size=1024 * 1024)
    auth.dummy_hash()  # now, not in the first login with an unknown name (upstream/auth.py)
    app[SETTINGS] = settings
    app[DATABASE_URL] = database_url
    app[HEAD] = head_revision()
    engine = db.make_engine(database_url)
    app[ENGINE] = engine
    app[SESSIONS] = async_sessionmaker(engine, expire_on_commit=False)
    pool = engine.sync_engine.pool
    app[METRICS] = Metrics(settings.backup_dir,
                           lambda: (pool.size(), pool.checkedout()))  # type: ignore[attr-defined]
    app[HUB] = EventHub(db.libpq_url(database_url))

    async def lifecycle(app: web.Application):
        await app[HUB].start()
        yield
        await app[HUB].close()
        await app[ENGINE].dispose()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/health", health.health)
    r.add_get("/ready", health.ready)
    if settings.enable_metrics:  # ENABLE_METRICS=false: no /metrics at all (404)
        r.add_get("/metrics", health.metrics)
    r.add_post("/api/auth/login", auth_routes.login)
    r.add_get("/api/campaigns", campaigns.list_campaigns)
    r.add_post("/api/campaigns", campaigns.create_campaign)
    r.add_get(r"/api/campaigns/{id:\d+}", campaigns.get_campaign)
    r.add_patch(r"/api/campaigns/{id:\d+}", campaigns.update_campaign)
    r.add_delete(r"/api/campaigns/{id:\d+}", campaigns.delete_campaign)
    r.add_post(r"/api/campaigns/{id:\d+}/calls", campaigns.add_call)
    r.add_get("/api/calls/events", calls.call_events)
    r.add_get("/api/calls", calls.list_calls)
    r.add_patch(r"/api/calls/{id:\d+}", calls.update_call)
    return app


