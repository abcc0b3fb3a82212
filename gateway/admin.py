"""The admin listener: /health, /ready, /config and /metrics, never on the public port.

Its answers name no software either (no `Server` header), like the public ones.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.config.render import policy_data
from gateway.handler import Handler
from gateway.observability.metrics import exposition


def _counters(rt: Any) -> dict[str, Any]:
    """Where the rate-limit counters live and what applies while Redis is away (live)."""
    redis = rt.policy.redis
    if not redis.url:
        return {"counters": "in-process", "replicas": 1}
    limiter = rt.limiter
    return {"counters": "redis", "replicas": limiter.replicas, "fallback": redis.fallback,
            "failure_mode": redis.failure_mode,
            "while_redis_is_away": limiter.describe_replicas()}


async def _no_server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def admin_app(handler_of: Callable[[], Handler],
              last_reload: Callable[[], dict[str, Any] | None] = lambda: None
              ) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        env = handler_of().runtime.policy.environment
        return web.json_response({"status": "healthy", "version": __version__,
                                  "environment": env})

    async def ready(_: web.Request) -> web.Response:
        handler = handler_of()
        if handler.draining:
            return web.json_response({"status": "not ready", "reason": "draining"}, status=503)
        rt = handler.runtime
        used = {route.upstream for route in rt.policy.routes} & set(rt.pools)
        problem = None
        for name in sorted(used) or [rt.policy.upstream.name]:
            problem = await rt.pools[name].reachable()
            if problem is not None:
                problem = f"upstream {name}: {problem}" if len(rt.pools) > 1 else problem
                break
        if problem is not None:
            return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    async def config(_: web.Request) -> web.Response:
        rt = handler_of().runtime
        document = rt.compiled.loaded.document
        loaded_at = datetime.datetime.fromtimestamp(rt.compiled.loaded_at, datetime.UTC)
        return web.json_response({
            "policy": policy_data(document),
            "source_files": list(document.files),
            "digest": document.digest,
            "loaded_at": loaded_at.isoformat(timespec="seconds"),
            "last_reload": last_reload(),  # null until a reload is tried
            "rate_limits": _counters(rt),
        })

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = exposition(request.headers.get("Accept", ""))
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    app = web.Application()
    app.on_response_prepare.append(_no_server_header)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/config", config)
    app.router.add_get("/metrics", metrics)
    return app
