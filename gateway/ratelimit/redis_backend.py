"""Rate-limit state in Redis: every limit of a request decided in one atomic Lua call.

- The script (LUA) runs the arithmetic of algorithms.py on Redis server time (`TIME`), so
  gateway replicas with skewed clocks agree. It is loaded on every new connection and called
  by EVALSHA; a NOSCRIPT answer (SCRIPT FLUSH) loads it again and repeats the call.
- Keys are `prefix{tag}:policy:algo+period` (keys.py); a request's limits normally share one
  tag (the client), so one call suffices on Redis Cluster too. Each key expires on its own.
- One pipelined connection per process (redis_connection.py), on a Cluster one per master
  (redis_cluster.py, which routes by slot and follows MOVED/ASK): calls made in the same
  event-loop turn share one write and one round trip. A client's encoded call is kept with
  its cached keys (keys.Checks).

Every check is bounded by `redis.timeout`; the limiter (limiter.py) decides what a failure
means. Besides the checks, the limiter's background task asks `probe` (is Redis answering,
with the script, again?) and sends its replica heartbeat through `command`.
"""

from __future__ import annotations

import asyncio
import hashlib
from binascii import crc_hqx
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any

import hiredis

from gateway.ratelimit.algorithms import Outcome
from gateway.ratelimit.keys import Checks, Item
from gateway.redis.cluster import SLOTS, ClusterRouter
from gateway.redis.connection import RedisConnection, RedisReplyError
from gateway.redis.endpoint import parse
from gateway.redis.resp import bulk, encode
from gateway.redis.sentinel import SentinelLocator
from gateway.settings.ratelimit import RateLimitPolicy

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
    if curr > 0 then reset = weight + P end
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

SHA = hashlib.sha1(LUA.encode()).hexdigest()
SCRIPT_LOAD = encode("SCRIPT", "LOAD", LUA)
PING = encode("PING")
SCRIPT_EXISTS = encode("SCRIPT", "EXISTS", SHA)
NO_STATE = (0, 0, 0)  # the state stays in Redis; Outcome.state is the in-process backend's


@lru_cache(maxsize=1024)
def script_args(policy: RateLimitPolicy) -> tuple[str, ...]:
    """A limit's five script arguments; fixed per policy, so built once."""
    return (policy.code, str(policy.limit), str(policy.period_ms),
            str(policy.capacity), "1" if policy.enforced else "0")


def pack_call(items: Sequence[Item], now_ms: int = 0) -> bytes:
    """The EVALSHA command for `items`; now_ms 0 means Redis's own clock."""
    args: list[str] = [str(now_ms)]
    for policy, _ in items:
        args += script_args(policy)
    keys = [key for _, key in items]
    return (b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(keys) + len(args))
            + bulk(SHA) + bulk(len(keys)) + b"".join(bulk(a) for a in keys + args))


def outcomes(reply: list[int], count: int) -> tuple[bool, list[Outcome]]:
    """(admitted, outcomes) from the script's reply: admitted, now, then per limit allowed,
    remaining, reset, retry."""
    return bool(reply[0]), [Outcome(bool(reply[i]), reply[i + 1], reply[i + 2], reply[i + 3],
                                    NO_STATE) for i in range(2, 2 + 4 * count, 4)]


def slot_of(key: str) -> int:
    """The Redis Cluster slot of a key: CRC16 (XMODEM, binascii.crc_hqx) of the text inside
    its first non-empty `{...}`, or of the whole key, modulo 16384."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc_hqx(data, 0) % SLOTS


class RedisBackend:
    def __init__(self, url: str, timeout: float) -> None:
        self.endpoint = parse(url)
        self.timeout = timeout
        self.cluster: ClusterRouter | None = None
        self.connection: RedisConnection | None = None
        self.sentinel: SentinelLocator | None = None
        if self.endpoint.kind == "cluster":
            self.cluster = ClusterRouter(self.endpoint, timeout, setup=[SCRIPT_LOAD])
        else:
            self.sentinel = (SentinelLocator(self.endpoint, timeout)
                             if self.endpoint.kind == "sentinel" else None)
            self.connection = RedisConnection(self.endpoint, timeout, setup=[SCRIPT_LOAD],
                                              locate=self.sentinel)

    def nodes(self, checks: Checks) -> str:
        """On a Cluster, the masters (`host:port`, joined by `,`) whose slots hold the
        request's keys, as last learnt ('' before the slot map is known); '' for one Redis."""
        if self.cluster is None:
            return ""
        owners = sorted({self.cluster.owner(slot) for slot in self._slots(checks)})
        return ",".join(owners)

    @staticmethod
    def _slots(checks: Checks) -> tuple[int, ...]:
        """The Cluster slot of each item's key, kept with the checks."""
        slots = checks.slots
        if slots is None:
            slots = checks.slots = tuple(slot_of(key) for _, key in checks.items)
        return slots

    async def check(self, checks: Checks, now_ms: int = 0) -> tuple[bool, list[Outcome]]:
        """(admitted, one outcome per item), decided by one Lua call on Redis.

        On a cluster, items whose keys live in different slots are decided by one call per
        slot (concurrently); see docs/ratelimiting.md.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout
        if self.cluster is not None:
            return await self._check_cluster(checks, now_ms, deadline)
        assert self.connection is not None
        packed = checks.packed if now_ms == 0 else None
        if packed is None:
            packed = self._packed(checks, now_ms)
        reply = await self.connection.call(packed, deadline)
        if type(reply) is not list:
            reply = await self._after_error(reply, packed, deadline, self.connection.call,
                                            self.connection.reconnect)
        return outcomes(reply, len(checks.items))

    @staticmethod
    def _packed(checks: Checks, now_ms: int) -> bytes:
        """The encoded call for all of `checks`, kept with them when on Redis's clock."""
        packed = checks.packed if now_ms == 0 else None
        if packed is None:
            packed = pack_call(checks.items, now_ms)
            if now_ms == 0:
                checks.packed = packed
        return packed

    async def _after_error(self, reply: Any, packed: bytes, deadline: float,
                           call: Callable[[bytes, float], Awaitable[Any]],
                           reconnect: Callable[[], None] | None = None) -> list[int]:
        message = str(reply)
        if isinstance(reply, hiredis.ReplyError) and message.startswith("NOSCRIPT"):
            # SCRIPT FLUSH (a restart drops the connection, and a new one loads the script);
            # within the same deadline: the check as a whole is bounded by the timeout
            loaded = await call(SCRIPT_LOAD, deadline)
            if not isinstance(loaded, hiredis.ReplyError):
                reply = await call(packed, deadline)
                if type(reply) is list:
                    return reply
                message = str(reply)
        if "READONLY" in message and reconnect is not None:
            # a demoted master (Sentinel failover), also as the answer to the retry after a
            # NOSCRIPT; Redis 6 wraps it: "ERR Error running script ... -READONLY You can't
            # write against a replica"
            reconnect()
        raise RedisReplyError(message)

    async def _check_cluster(self, checks: Checks, now_ms: int, deadline: float
                             ) -> tuple[bool, list[Outcome]]:
        items = checks.items
        groups: dict[int, list[int]] = {}
        for i, slot in enumerate(self._slots(checks)):
            groups.setdefault(slot, []).append(i)
        if len(groups) == 1:
            (slot,) = groups
            reply = await self._cluster_call(slot, self._packed(checks, now_ms), deadline)
            return outcomes(reply, len(items))
        parts = await asyncio.gather(*(
            self._cluster_call(slot, pack_call([items[i] for i in idx], now_ms), deadline)
            for slot, idx in groups.items()))
        result: list[Outcome] = [None] * len(items)  # type: ignore[list-item]
        admitted = True
        for idx, reply in zip(groups.values(), parts, strict=True):
            part_admitted, got = outcomes(reply, len(idx))
            admitted = admitted and part_admitted
            for i, outcome in zip(idx, got, strict=True):
                result[i] = outcome
        return admitted, result

    async def _cluster_call(self, slot: int, packed: bytes, deadline: float) -> list[int]:
        assert self.cluster is not None
        cluster = self.cluster
        reply = await cluster.call(slot, packed, deadline)
        if type(reply) is not list:
            reply = await self._after_error(
                reply, packed, deadline, lambda p, d: cluster.call(slot, p, d))
        return reply

    async def command(self, packed: bytes, key: str) -> Any:
        """One command about `key` (its reply; a hiredis.ReplyError for an error answer),
        bounded by the timeout: to the one Redis, or to the master of `key`'s slot."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        if self.cluster is not None:
            return await self.cluster.call(slot_of(key), packed, deadline)
        assert self.connection is not None
        return await self.connection.call(packed, deadline)

    async def probe(self, nodes: str = "") -> None:
        """Raises unless Redis answers again and holds the script: PING (a new connection
        first, with its SCRIPT LOAD), then SCRIPT EXISTS, and SCRIPT LOAD if it is missing.
        On a Cluster, each master of `nodes` (as named by `nodes()`); with none named, the
        slot map is asked for again."""
        if self.cluster is None:
            assert self.connection is not None
            await self._probe(self.connection)
            return
        if not nodes:
            deadline = asyncio.get_running_loop().time() + self.timeout
            await self.cluster._wait_for_map(deadline)
            return
        await asyncio.gather(*(self._probe(self.cluster.connection(node))
                               for node in nodes.split(",")))

    async def _probe(self, connection: RedisConnection) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout
        pong = await connection.call(PING, deadline)
        if isinstance(pong, hiredis.ReplyError):  # LOADING, MASTERDOWN, ...
            raise RedisReplyError(str(pong))
        exists = await connection.call(SCRIPT_EXISTS, deadline)
        if isinstance(exists, list) and exists and exists[0] == 1:
            return
        loaded = await connection.call(SCRIPT_LOAD, deadline)
        if isinstance(loaded, hiredis.ReplyError):
            raise RedisReplyError(str(loaded))

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.sentinel is not None:
            await self.sentinel.close()
        if self.cluster is not None:
            await self.cluster.close()
