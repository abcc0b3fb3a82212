"""The admin listener: /health and /ready, on their own port, never on the public one."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway import __version__
from gateway.handler import Handler


def admin_app(handler_of: Callable[[], Handler]) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        env = handler_of().runtime.policy.environment
        return web.json_response({"status": "healthy", "version": __version__,
                                  "environment": env})

    async def ready(_: web.Request) -> web.Response:
        handler = handler_of()
        if handler.draining:
            return web.json_response({"status": "not ready", "reason": "draining"}, status=503)
        problem = await handler.runtime.pool.reachable()
        if problem is not None:
            return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app
