"""Rate-limit state in Redis: every limit of a request decided in one atomic Lua call.

- The script (check.lua, beside this module) runs the arithmetic of algorithms.py on Redis
  server time (`TIME`), so gateway replicas with skewed clocks agree. The client
  (gateway.redis.client) loads it on every new connection, calls it by EVALSHA and loads it
  again after a NOSCRIPT answer (SCRIPT FLUSH).
- Keys are `prefix{tag}:policy:algo+period` (keys.py); a request's limits normally share one
  tag (the client), so one call suffices on Redis Cluster too. Each key expires on its own.
- One pipelined connection per process, on a Cluster one per master (gateway.redis): calls
  made in the same event-loop turn share one write and one round trip.
- What the script call needs is derived here, from the policies and keys alone: a policy's
  five script arguments (once per policy), and a request's encoded call and Cluster slots
  (once per keys.Checks, which the handler keeps per client; kept here while the Checks
  live), so a returning client costs neither encoding nor hashing.

Every check is bounded by `redis.timeout`; the limiter (limiter.py) decides what a failure
means. Besides the checks, the limiter's background task asks `probe` (is Redis answering,
with the script, again?) and sends its replica heartbeat (`announce`, heartbeat.lua) and
leaves the set (`leave`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from weakref import WeakKeyDictionary

from gateway.ratelimit.algorithms import CODES, Outcome
from gateway.ratelimit.keys import Checks, Item
from gateway.redis.client import RedisClient, RedisReplyError, Script, encode, slot_of
from gateway.settings.ratelimit import RateLimitPolicy

LUA = resources.files(__package__).joinpath("check.lua").read_text(encoding="utf-8")
HEARTBEAT = resources.files(__package__).joinpath("heartbeat.lua").read_text(encoding="utf-8")
SCRIPT = Script(LUA)
NO_STATE = (0, 0, 0)  # the state stays in Redis; Outcome.state is the in-process backend's


@lru_cache(maxsize=1024)
def script_args(policy: RateLimitPolicy) -> tuple[str, ...]:
    """A limit's five script arguments; fixed per policy, so built once."""
    return (CODES[policy.algorithm], str(policy.limit), str(policy.period_ms),
            str(policy.capacity), "1" if policy.enforced else "0")


def pack_call(items: Sequence[Item], now_ms: int = 0) -> bytes:
    """The EVALSHA command for `items`; now_ms 0 means Redis's own clock."""
    args: list[str] = [str(now_ms)]
    for policy, _ in items:
        args += script_args(policy)
    return SCRIPT.call([key for _, key in items], args)


def outcomes(reply: list[int], count: int) -> tuple[bool, list[Outcome]]:
    """(admitted, outcomes) from the script's reply: admitted, now, then per limit allowed,
    remaining, reset, retry."""
    return bool(reply[0]), [Outcome(bool(reply[i]), reply[i + 1], reply[i + 2], reply[i + 3],
                                    NO_STATE) for i in range(2, 2 + 4 * count, 4)]


class Call:
    """A request's script call, derived once from its Checks: the encoded call on Redis's
    clock, and on a Cluster the slot of each key (in item order)."""

    __slots__ = ("packed", "slots")

    def __init__(self, checks: Checks, cluster: bool) -> None:
        self.packed = pack_call(checks.items)
        self.slots = tuple(slot_of(key) for _, key in checks.items) if cluster else ()


class RedisBackend:
    def __init__(self, url: str, timeout: float) -> None:
        self.client = RedisClient(url, timeout, scripts=[SCRIPT])
        self.timeout = timeout
        self.on_cluster = self.client.is_cluster  # keys live on several masters
        self._calls: WeakKeyDictionary[Checks, Call] = WeakKeyDictionary()

    def _derive(self, checks: Checks) -> Call:
        call = self._calls[checks] = Call(checks, self.on_cluster)
        return call

    def nodes(self, checks: Checks) -> str:
        """On a Cluster, the masters (`host:port`, joined by `,`) whose slots hold the
        request's keys, as last learnt ('' before the slot map is known); '' for one Redis."""
        if not self.on_cluster:
            return ""
        return self.client.nodes((self._calls.get(checks) or self._derive(checks)).slots)

    async def check(self, checks: Checks, now_ms: int = 0) -> tuple[bool, list[Outcome]]:
        """(admitted, one outcome per item), decided by one Lua call on Redis.

        On a cluster, items whose keys live in different slots are decided by one call per
        slot (concurrently); see docs/ratelimiting.md.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout
        call = self._calls.get(checks) or self._derive(checks)
        if self.on_cluster:
            return await self._check_cluster(checks, call, now_ms, deadline)
        packed = call.packed if now_ms == 0 else pack_call(checks.items, now_ms)
        reply = await self.client.run(SCRIPT, packed, deadline)
        return outcomes(reply, len(checks.items))

    async def _check_cluster(self, checks: Checks, call: Call, now_ms: int, deadline: float
                             ) -> tuple[bool, list[Outcome]]:
        items = checks.items
        groups: dict[int, list[int]] = {}
        for i, slot in enumerate(call.slots):
            groups.setdefault(slot, []).append(i)
        if len(groups) == 1:
            (slot,) = groups
            packed = call.packed if now_ms == 0 else pack_call(items, now_ms)
            reply = await self.client.run(SCRIPT, packed, deadline, slot)
            return outcomes(reply, len(items))
        parts = await asyncio.gather(*(
            self.client.run(SCRIPT, pack_call([items[i] for i in idx], now_ms), deadline, slot)
            for slot, idx in groups.items()))
        result: list[Outcome] = [None] * len(items)  # type: ignore[list-item]
        admitted = True
        for idx, reply in zip(groups.values(), parts, strict=True):
            part_admitted, got = outcomes(reply, len(idx))
            admitted = admitted and part_admitted
            for i, outcome in zip(idx, got, strict=True):
                result[i] = outcome
        return admitted, result

    async def announce(self, key: str, replica: str, stale_ms: int) -> tuple[int, int]:
        """This replica's heartbeat in the sorted set `key` (heartbeat.lua): (1 if its entry
        was missing, else 0; the replicas heard from within `stale_ms`)."""
        reply = await self.client.command(encode("EVAL", HEARTBEAT, 1, key, replica, stale_ms),
                                          key)
        if not isinstance(reply, list) or len(reply) != 2:
            raise RedisReplyError(str(reply))
        added, count = reply
        return added, count

    async def leave(self, key: str, replica: str) -> None:
        """Take this replica out of the set `key` (its reply is not looked at)."""
        await self.client.command(encode("ZREM", key, replica), key)

    async def probe(self, nodes: str = "") -> None:
        """Raises unless Redis answers again and holds the script: PING (a new connection
        first, with its SCRIPT LOAD), then SCRIPT EXISTS, and SCRIPT LOAD if it is missing.
        On a Cluster, each master of `nodes` (as named by `nodes()`); with none named, the
        slot map is asked for again."""
        await self.client.probe(nodes)

    async def close(self) -> None:
        await self.client.close()
