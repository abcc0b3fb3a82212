"""The limiter: decides a request's rate limits, through Redis or in-process, and stays up
when Redis does not.

- No `redis.url`: the in-process backend decides (one instance only).
- With Redis: every call is bounded by `redis.timeout` (the backend keeps the deadline). A
  failure or timeout counts against a circuit breaker; after 3 in a row the breaker opens and
  Redis is not asked for 500 ms, so requests stop paying the timeout; then one request probes
  it, and success closes the breaker. On a Cluster there is one breaker per set of nodes a
  request needs (normally one node), so a failing node does not keep requests whose keys live
  on healthy nodes away from Redis, and their successes do not keep its breaker closed.
  While Redis is unavailable, `failure_mode: open` decides in-process, `closed` refuses with
  503.
- Recovery in the background: while a breaker is open, a background task probes Redis every
  PROBE_EVERY (PING, then SCRIPT EXISTS / SCRIPT LOAD, `RedisBackend.probe`) and closes the
  breaker as soon as Redis answers, with no client request involved: shared decisions resume
  within a few hundred ms of Redis answering again, idle or not, so the first burst after
  recovery is decided by Redis (before, the first request of the burst probed and the rest of
  it took the in-process fallback). A request still probes after the cool-down too (if the
  background probe is slower); a background probe that fails leaves the breaker as it is.
- Replicas: the same task announces this process in Redis every HEARTBEAT_EVERY (a sorted set
  `<key_prefix>replicas` scored by Redis's clock, `RedisBackend.announce`; entries older than
  STALE_AFTER are dropped) and counts the entries: the number of gateway processes sharing these
  counters (each worker of `--workers N` is one). With `redis.fallback: divide` (the default),
  the in-process fallback enforces ceil(limit / replicas) of every limit (a token bucket's
  capacity divided likewise), the count known when the outage began (heartbeats fail while Redis
  is away), so N replicas together admit about one limit rather than N; `full`: each replica the
  whole limit. The task is started by `start()` (`gateway run`, at start) or the first decision,
  and ends in close() (shutdown, or a reload that replaces the limiter), which also takes this
  process out of the set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from gateway.observability.metrics import RATELIMIT_REPLICAS, REDIS_DURATION, REDIS_ERRORS
from gateway.ratelimit.algorithms import Outcome
from gateway.ratelimit.keys import Checks, Item
from gateway.ratelimit.memory import MemoryBackend
from gateway.settings.ratelimit import RateLimitPolicy, RedisSettings

if TYPE_CHECKING:
    from gateway.ratelimit.redis_backend import RedisBackend

log = logging.getLogger("gateway.ratelimit")

PROBE_EVERY = 0.2  # s: background probes of an open breaker
HEARTBEAT_EVERY = 2.0  # s: this process announces itself in `<key_prefix>replicas`
STALE_AFTER = 3 * HEARTBEAT_EVERY + 1.0  # s: a replica not heard from for this long is gone

_replica_id: tuple[int, str] | None = None  # (pid, id): a forked worker makes its own
_announcing: dict[tuple[str, str], int] = {}  # live limiters per (url, key_prefix)


def replica_id() -> str:
    """This process's name in the replica set: host, pid and a random part."""
    global _replica_id
    if _replica_id is None or _replica_id[0] != os.getpid():
        _replica_id = (os.getpid(),
                       f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}")
    return _replica_id[1]


def divided(items: Sequence[Item], replicas: int) -> Sequence[Item]:
    """`items` with every limit divided among `replicas` (rounded up); as they are for one."""
    if replicas <= 1:
        return items
    return tuple((_divided(policy, replicas), key) for policy, key in items)


@lru_cache(maxsize=1024)
def _divided(policy: RateLimitPolicy, replicas: int) -> RateLimitPolicy:
    burst = None if policy.burst is None else -(-policy.burst // replicas)
    return dataclasses.replace(policy, limit=-(-policy.limit // replicas), burst=burst)


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
        self.redis: RedisBackend | None = None
        if settings.url:
            # imported here, once per limiter: the Redis client (and its Lua scripts) is not
            # loaded by a gateway whose policy has no redis.url
            from gateway.ratelimit.redis_backend import RedisBackend

            self.redis = RedisBackend(settings.url, settings.timeout)
        self.while_open = ("limited routes answer 503" if settings.failure_mode == "closed"
                           else "rate limits fall back to in-process counters")
        self.breaker = Breaker(while_open=self.while_open)
        self.per_node = self.redis is not None and self.redis.on_cluster
        self.node_breakers: dict[str, Breaker] = {}
        self.replicas = 1  # gateway processes sharing the counters, as last counted
        self._beats = 0  # heartbeats answered
        self._rebuilt_until = 0.0  # the replica set was lost (Redis restarted): see _heartbeat
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._announce = (settings.url, settings.key_prefix)

    def start(self) -> None:
        """Start the background task (heartbeats; probes while a breaker is open) on the
        running loop, if there is Redis; idempotent. `gateway run` starts it with the
        limiter; otherwise the first decision does (never for `gateway explain`, which
        decides nothing and is no replica)."""
        if self._task is not None or self._closed or self.redis is None:
            return
        _announcing[self._announce] = _announcing.get(self._announce, 0) + 1
        self._task = asyncio.get_running_loop().create_task(self._background())

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
        if self._task is None:
            self.start()
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
        items = checks.items
        if self.replicas > 1 and self.settings.fallback == "divide":
            items = divided(items, self.replicas)  # type: ignore[assignment]
        admitted, outcomes = self.memory.check(items)
        return Decision(admitted, tuple(zip(checks.policies, outcomes, strict=True)), "fallback")

    # --- the background task: probes while a breaker is open, heartbeats -------------------

    async def _background(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            try:
                if await self._probe_open():
                    next_beat = loop.time()  # recount at once: Redis may have restarted empty
                if loop.time() >= next_beat:
                    next_beat = loop.time() + HEARTBEAT_EVERY
                    await self._heartbeat()
            except Exception as exc:  # Redis away: tried again on the next round
                log.debug("redis background call failed: %r", exc)
            await asyncio.sleep(PROBE_EVERY)

    async def _probe_open(self) -> bool:
        """Probe Redis for each open breaker; close those it answers for. True if one closed."""
        assert self.redis is not None
        if self.per_node:
            open_ = [(n, b) for n, b in self.node_breakers.items() if b.failures >= b.threshold]
        else:
            open_ = [("", self.breaker)] if self.breaker.failures >= self.breaker.threshold \
                else []
        closed = False
        for nodes, breaker in open_:
            try:
                await self.redis.probe(nodes)
            except Exception as exc:
                log.debug("redis background probe failed: %r", exc)
                continue  # still open; the next round probes again
            breaker.success()
            closed = True
        return closed

    async def _heartbeat(self) -> None:
        assert self.redis is not None
        key = self.settings.key_prefix + "replicas"
        added, count = await self.redis.announce(key, replica_id(), round(STALE_AFTER * 1000))
        now = asyncio.get_running_loop().time()
        if added and self._beats:
            # our entry was gone: the set was lost (Redis restarted empty, or flushed); the
            # other replicas are back in it within one heartbeat, so until then the count
            # does not go down
            self._rebuilt_until = now + HEARTBEAT_EVERY + 1.0
        self._beats += 1
        if now < self._rebuilt_until:
            count = max(count, self.replicas)
        if count != self.replicas or self._beats == 1:
            self.replicas = count
            log.info("rate limits: %s", self.describe_replicas())
        RATELIMIT_REPLICAS.set(count)

    def describe_replicas(self) -> str:
        n = self.replicas
        shared = (f"{n} gateway replicas share the rate-limit counters" if n != 1
                  else "1 gateway replica shares the rate-limit counters")
        if self.settings.failure_mode == "closed":
            return shared + "; while Redis is away limited routes answer 503"
        if self.settings.fallback == "divide" and n > 1:
            return shared + (f"; while Redis is away each enforces 1/{n} of every limit "
                             "in-process (redis.fallback divide)")
        return shared + "; while Redis is away each enforces the whole limits in-process"

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its end, not its CancelledError
            _announcing[self._announce] -= 1
            if not _announcing[self._announce]:  # the last limiter here: leave the set
                del _announcing[self._announce]
                RATELIMIT_REPLICAS.set(0)  # not counted (until another limiter here counts)
                if self._beats and self.redis is not None:
                    key = self.settings.key_prefix + "replicas"
                    with contextlib.suppress(Exception):
                        await self.redis.leave(key, replica_id())
        if self.redis is not None:
            await self.redis.close()
