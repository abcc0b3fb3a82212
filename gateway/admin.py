"""The admin listener: /health, /ready, /config and /metrics, never on the public port.

It runs on the gateway's own HTTP server (http/protocol.py), like the public listener, so a
gateway process imports no web framework: that halves its start-up (aiohttp alone took
~0.2 s to import, most of it loading the system's CA store twice for its client), which
matters for a worker respawned under load and for every `gateway` command. GET and HEAD
only (405 with `Allow` otherwise), 404 for any other path; the gateway's own errors are
problem+json. Its answers name no software either (no `Server` header), like the public ones.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from gateway import __version__
from gateway.config.render import policy_data
from gateway.handler import Handler
from gateway.http.problem import problem_response
from gateway.http.protocol import Exchange
from gateway.http.response import Answer
from gateway.observability.metrics import exposition

JSON = "application/json; charset=utf-8"
ALLOWED = (("Allow", "GET, HEAD"),)


def _counters(rt: Any) -> dict[str, Any]:
    """Where the rate-limit counters live and what applies while Redis is away (live)."""
    redis = rt.policy.redis
    if not redis.url:
        return {"counters": "in-process", "replicas": 1}
    limiter = rt.limiter
    return {"counters": "redis", "replicas": limiter.replicas, "fallback": redis.fallback,
            "failure_mode": redis.failure_mode,
            "while_redis_is_away": limiter.describe_replicas()}


def json_answer(data: object, status: int = 200) -> Answer:
    return Answer(status, (("Content-Type", JSON),), json.dumps(data).encode())


class Admin:
    """The admin listener's request handler (a `GatewayServer` handler). `handler_of` gives
    the current public handler (its runtime follows reloads); `last_reload` what the last
    reload did."""

    def __init__(self, handler_of: Callable[[], Handler],
                 last_reload: Callable[[], dict[str, Any] | None] = lambda: None) -> None:
        self.handler_of = handler_of
        self.last_reload = last_reload
        self.endpoints = {"/health": self.health, "/ready": self.ready,
                          "/config": self.config, "/metrics": self.metrics}

    async def __call__(self, exchange: Exchange) -> None:
        endpoint = self.endpoints.get(exchange.target.partition("?")[0])
        if endpoint is None:
            answer = problem_response(404, "no such admin endpoint: /health, /ready, "
                                      "/config and /metrics are served here")
        elif exchange.method not in ("GET", "HEAD"):
            answer = problem_response(405, f"{exchange.method} is not allowed here",
                                      headers=CIMultiDict(ALLOWED))
        else:
            answer = await endpoint(exchange)
        exchange.send(answer)

    async def health(self, _: Exchange) -> Answer:
        env = self.handler_of().runtime.policy.environment
        return json_answer({"status": "healthy", "version": __version__, "environment": env})

    async def ready(self, _: Exchange) -> Answer:
        handler = self.handler_of()
        if handler.draining:
            return json_answer({"status": "not ready", "reason": "draining"}, 503)
        rt = handler.runtime
        used = {route.upstream for route in rt.policy.routes} & set(rt.pools)
        problem = None
        for name in sorted(used) or [rt.policy.upstream.name]:
            problem = await rt.pools[name].reachable()
            if problem is not None:
                problem = f"upstream {name}: {problem}" if len(rt.pools) > 1 else problem
                break
        if problem is not None:
            return json_answer({"status": "not ready", "reason": problem}, 503)
        return json_answer({"status": "ready"})

    async def config(self, _: Exchange) -> Answer:
        rt = self.handler_of().runtime
        document = rt.compiled.loaded.document
        loaded_at = datetime.datetime.fromtimestamp(rt.compiled.loaded_at, datetime.UTC)
        return json_answer({
            "policy": policy_data(document),
            "source_files": list(document.files),
            "digest": document.digest,
            "loaded_at": loaded_at.isoformat(timespec="seconds"),
            "last_reload": self.last_reload(),  # null until a reload is tried
            "rate_limits": _counters(rt),
        })

    async def metrics(self, exchange: Exchange) -> Answer:
        body, content_type = exposition(exchange.headers.get("Accept", ""))
        return Answer(200, (("Content-Type", content_type),), body)
