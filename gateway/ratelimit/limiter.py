"""The limiter: decides a request's rate limits, through Redis or in-process, and stays up
when Redis does not.

- No `redis.url`: the in-process backend decides (one instance only).
- With Redis: every call is bounded by `redis.timeout` (the backend keeps the deadline). A
  failure or timeout counts against a circuit breaker; after 3 in a row the breaker opens and
  Redis is not asked for 500 ms, so requests stop paying the timeout; then one request probes
  it, and success closes the breaker. On a Cluster there is one breaker per set of nodes a
  request needs (normally one node), so a failing node does not keep requests whose keys live
  on healthy nodes away from Redis, and their successes do not keep its breaker closed.
  While Redis is unavailable, `failure_mode: open` decides in-process (the same limits, per
  instance), `closed` refuses with 503.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from gateway.observability.metrics import REDIS_DURATION, REDIS_ERRORS
from gateway.ratelimit.algorithms import Outcome
from gateway.ratelimit.config import RateLimitPolicy, RedisSettings
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.redis_backend import RedisBackend

log = logging.getLogger("gateway.ratelimit")


class Decision(NamedTuple):
    admitted: bool  # no enforced limit was exceeded
    results: tuple[tuple[RateLimitPolicy, Outcome], ...]
    source: str  # redis | memory | fallback


class RateLimitUnavailable(Exception):
    """Redis is down and `failure_mode` is closed."""


class Breaker:
    """Consecutive-failure circuit breaker with a single probe after a cooldown."""

    def __init__(self, threshold: int = 3, cooldown: float = 0.5,
                 while_open: str = "rate limits fall back to in-process counters",
                 name: str = "redis") -> None:
        self.threshold = threshold
        self.while_open = while_open
        self.name = name
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def allow(self) -> bool:
        if self.failures < self.threshold:
            return True
        if self.probing or time.monotonic() < self.open_until:
            return False
        self.probing = True  # this caller is the probe
        return True

    def success(self) -> None:
        if self.failures >= self.threshold:
            log.info("%s is back; rate limits are shared again", self.name)
        self.failures = 0
        self.probing = False

    def abandoned(self) -> None:
        """The call ended neither way (its request was cancelled: the client went away); if
        it was the probe, the next caller probes instead."""
        self.probing = False

    def failure(self, reason: object = None) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold:
            if self.failures == self.threshold:
                log.error("%s unavailable (breaker open): %s; last error: %r",
                          self.name, self.while_open, reason)
            self.open_until = time.monotonic() + self.cooldown


MAX_BREAKERS = 256  # per-node breakers kept; a Cluster's topology rarely has more node sets


class Limiter:
    def __init__(self, settings: RedisSettings, memory: MemoryBackend | None = None) -> None:
        self.settings = settings
        self.memory = memory or MemoryBackend()
        self.redis = RedisBackend(settings.url, settings.timeout) if settings.url else None
        self.while_open = ("limited routes answer 503" if settings.failure_mode == "closed"
                           else "rate limits fall back to in-process counters")
        self.breaker = Breaker(while_open=self.while_open)
        self.per_node = self.redis is not None and self.redis.cluster is not None
        self.node_breakers: dict[str, Breaker] = {}

    def breaker_for(self, checks: Checks) -> Breaker:
        """On a Cluster, the breaker of the masters holding the request's keys."""
        assert self.redis is not None
        nodes = self.redis.nodes(checks)
        breaker = self.node_breakers.get(nodes)
        if breaker is None:
            if len(self.node_breakers) >= MAX_BREAKERS:  # nodes replaced over time
                self.node_breakers = {k: b for k, b in self.node_breakers.items() if b.failures}
            breaker = Breaker(while_open=self.while_open,
                              name=f"redis node {nodes}" if nodes else "redis cluster")
            self.node_breakers[nodes] = breaker
        return breaker

    async def decide(self, checks: Checks) -> Decision:
        if self.redis is None:
            admitted, outcomes = self.memory.check(checks.items)
            return Decision(admitted, tuple(zip(checks.policies, outcomes, strict=True)), "memory")
        breaker = self.breaker_for(checks) if self.per_node else self.breaker
        if breaker.allow():
            started = time.perf_counter()
            try:
                admitted, outcomes = await self.redis.check(checks)
            except Exception as exc:  # timeout, connection refused, reset, script error...
                breaker.failure(exc)
                REDIS_ERRORS.labels("ratelimit").inc()
                log.debug("redis rate-limit call failed: %r", exc)
            except BaseException:  # cancelled; a probe left pending would stay open forever
                breaker.abandoned()
                raise
            else:
                breaker.success()
                REDIS_DURATION.observe(time.perf_counter() - started)
                results = tuple(zip(checks.policies, outcomes, strict=True))
                return Decision(admitted, results, "redis")
        if self.settings.failure_mode == "closed":
            raise RateLimitUnavailable
        admitted, outcomes = self.memory.check(checks.items)
        return Decision(admitted, tuple(zip(checks.policies, outcomes, strict=True)), "fallback")

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
