"""Rate-limit state in Redis: every limit of a request decided in one atomic Lua call.

- The script (LUA) runs the arithmetic of algorithms.py on Redis server time (`TIME`), so
  gateway replicas with skewed clocks agree. It is called by EVALSHA and loaded again when
  Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
- Keys are `prefix{tag}:policy:algo+period` (keys.py); a request's limits normally share one
  tag (the client), so one call suffices on Redis Cluster too. Each key expires on its own.
- Calls made in the same event-loop turn are sent together in one pipeline (one round trip).

The limiter facade (limiter.py) bounds every call with `redis.timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.ratelimit.algorithms import CODES, Outcome
from gateway.ratelimit.config import RateLimitPolicy
from gateway.ratelimit.memory import Item

LUA = """
local function idiv(a, b)
  local q = math.floor(a / b)
  if (q + 1) * b <= a then q = q + 1 elseif q * b > a then q = q - 1 end
  return q
end
local function cdiv(a, b) return -idiv(-a, b) end

if redis.replicate_commands then pcall(redis.replicate_commands) end
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end
local out = {0, now}
local pending = {}
local admitted = true
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 5
  local algo, L, P = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local C, enforce = tonumber(ARGV[o + 4]), ARGV[o + 5] == '1'
  local st = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
  local a, b, c = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  local allowed, remaining, reset, retry, na, nb, nc, ttl
  if algo == 'f' then
    local w = idiv(now, P)
    local count = 0
    if a == w then count = b end
    allowed = count < L
    if allowed then count = count + 1; remaining = L - count else remaining = 0 end
    reset = (w + 1) * P - now
    if allowed then retry = 0 else retry = reset end
    na, nb, nc, ttl = w, count, 0, reset + 1000
  elseif algo == 's' then
    local w = idiv(now, P)
    local curr, prev = 0, 0
    if a == w then curr, prev = b, c elseif a ~= nil and a == w - 1 then curr, prev = 0, b end
    local weight = P - (now - w * P)
    allowed = prev * weight + (curr + 1) * P <= L * P
    if allowed then
      curr = curr + 1
      remaining = idiv(L * P - prev * weight - curr * P, P)
      if remaining < 0 then remaining = 0 end
      retry = 0
    else
      remaining = 0
      retry = nil
      if curr + 1 <= L and prev > 0 then
        local wait = cdiv(prev * weight + (curr + 1 - L) * P, prev)
        if wait < weight then retry = wait end
      end
      if retry == nil then
        local extra = 0
        if curr > L - 1 then extra = cdiv((curr - L + 1) * P, curr) end
        retry = weight + extra
      end
    end
    reset = weight
    na, nb, nc, ttl = w, curr, prev, weight + P + 1000
  else
    local cap = C * P
    local tokens = cap
    if a ~= nil then
      local elapsed = now - b
      if elapsed < 0 then elapsed = 0 end
      tokens = a + elapsed * L
      if tokens > cap then tokens = cap end
    end
    allowed = tokens >= P
    if allowed then tokens = tokens - P end
    remaining = idiv(tokens, P)
    reset = cdiv(cap - tokens, L)
    if allowed then retry = 0 else retry = cdiv(P - tokens, L) end
    na, nb, nc, ttl = tokens, now, 0, reset + 1000
  end
  if (not allowed) and enforce then admitted = false end
  pending[i] = {allowed, na, nb, nc, ttl}
  local allowed_flag = 0
  if allowed then allowed_flag = 1 end
  out[#out + 1] = allowed_flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if admitted then
  for i = 1, #KEYS do
    local p = pending[i]
    if p[1] then
      redis.call('HSET', KEYS[i], 'a', p[2], 'b', p[3], 'c', p[4])
      redis.call('PEXPIRE', KEYS[i], p[5])
    end
  end
  out[1] = 1
end
return out
"""


@lru_cache(maxsize=1024)
def script_args(policy: RateLimitPolicy) -> tuple[str, ...]:
    """A limit's five script arguments; fixed per policy, so built once."""
    return (CODES[policy.algorithm], str(policy.limit), str(policy.period_ms),
            str(policy.capacity), "1" if policy.enforced else "0")


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the text inside the first `{...}`."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def connect(url: str, timeout: float) -> tuple[Any, bool]:
    """(client, is_cluster) for redis://, rediss://, unix://, redis+sentinel://, redis+cluster://.

    redis+sentinel://[:password@]host:port[,host:port]/service[/db]
    redis+cluster://[:password@]host:port[,host:port]
    """
    # a stalled Redis must not hold sockets forever: reads give up well after the call timeout
    socket_timeout = max(1.0, timeout * 10)
    # One retry on a connection error: after Redis restarts, every pooled connection is dead
    # and fails once on first use; without it, each would cost a request a fallback or a 503.
    # (A connection lost after the script ran could count that request twice; that is rare
    # and errs on the strict side.)
    common = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
              "health_check_interval": 0,
              "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))}
    if url.startswith(("redis+sentinel://", "redis+cluster://")):
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        password = unquote(parts.password) if parts.password else None
        hosts = []
        for item in netloc.split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
        if url.startswith("redis+cluster://"):
            nodes = [ClusterNode(h, p) for h, p in hosts]
            return RedisCluster(startup_nodes=nodes, password=password, **common), True
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// URL needs /service_name")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, sentinel_kwargs={"password": password}, **common)
        return sentinel.master_for(path[0], db=db, password=password), False
    return aioredis.from_url(url, **common), False


class RedisBackend:
    def __init__(self, url: str, timeout: float) -> None:
        self.client, self.cluster = connect(url, timeout)
        self._sha: str | None = None
        self._queue: list[tuple[list[str], list[str], asyncio.Future[list[int]]]] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def check(self, items: Sequence[Item], now_ms: int = 0) -> tuple[bool, list[Outcome]]:
        """(admitted, one outcome per item), decided by one Lua call on Redis.

        On a cluster, items whose keys carry different hash tags live in different slots and
        are decided by one call per tag (concurrently); see docs/ratelimiting.md.
        """
        if self.cluster:
            groups: dict[str, list[int]] = {}
            for i, (_, key) in enumerate(items):
                groups.setdefault(hash_tag(key), []).append(i)
            if len(groups) > 1:
                parts = await asyncio.gather(*(self._call([items[i] for i in idx], now_ms)
                                               for idx in groups.values()))
                outcomes: list[Outcome | None] = [None] * len(items)
                for idx, (_, got) in zip(groups.values(), parts, strict=True):
                    for i, outcome in zip(idx, got, strict=True):
                        outcomes[i] = outcome
                return all(admitted for admitted, _ in parts), outcomes  # type: ignore[return-value]
        return await self._call(items, now_ms)

    async def _call(self, items: Sequence[Item], now_ms: int) -> tuple[bool, list[Outcome]]:
        keys = [key for _, key in items]
        args = [str(now_ms)]
        for policy, _ in items:
            args += script_args(policy)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.append((keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        raw = await future
        outcomes = []
        for i in range(len(items)):
            allowed, remaining, reset, retry = raw[2 + 4 * i: 6 + 4 * i]
            # the state stays in Redis; Outcome.state is only the in-process backend's
            outcomes.append(Outcome(bool(allowed), remaining, reset, retry, (0, 0, 0)))
        return bool(raw[0]), outcomes

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[str], list[str], asyncio.Future[list[int]]]]
                    ) -> None:
        try:
            results = await self._run([(k, a) for k, a, _ in batch])
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        if self._sha is None:
            self._sha = await self.client.script_load(LUA)
        results = await self._evalsha_all(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted or SCRIPT FLUSH: load the script and try those again
            self._sha = await self.client.script_load(LUA)
            again = await self._evalsha_all([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _evalsha_all(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        if self.cluster:
            return list(await asyncio.gather(
                *(self.client.evalsha(self._sha, len(k), *k, *a) for k, a in calls),
                return_exceptions=True))
        try:
            return await self._evalsha_on_connection(calls)
        except RedisConnectionError:  # a pooled connection Redis closed (restart): once more
            return await self._evalsha_on_connection(calls)

    async def _evalsha_on_connection(self, calls: list[tuple[list[str], list[str]]]
                                     ) -> list[Any]:
        """The batch written at once on one pooled connection, its replies read in order.

        redis-py's pipeline object would do the same with several layers of bookkeeping per
        call; on the hot path those layers cost more than the Redis round trip itself.
        """
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(
                [("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args in calls]))
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # NOSCRIPT and script errors, per call
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()  # the stream is in an unknown state
            raise
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        await self.client.aclose()
