"""Redis as `redis.url` names it (one Redis, the master a Sentinel names, or a Cluster), for a
caller that runs Lua scripts on it: the face of this package.

- `Script`: a Lua script's source and SHA1, and its commands ready to write (SCRIPT LOAD,
  SCRIPT EXISTS; EVALSHA by `Script.call`). A client loads its scripts on every new connection.
- `RedisClient.run`: one script call, bounded by a deadline. A NOSCRIPT answer (SCRIPT FLUSH;
  a restart drops the connection, and the new one loads the scripts) loads the script again
  and repeats the call within the same deadline; a READONLY answer (a master demoted by a
  Sentinel failover) drops the connection, so the next call asks for the master again.
- `command`: any other command; `probe`: is Redis answering, and does it hold the scripts?
- On a Cluster each call names the slot of its keys (`slot_of`), and `nodes` names the masters
  serving a set of slots (a caller may keep one circuit breaker per node set).

Commands are ready-made RESP bytes (resp.py) and replies come as hiredis gives them, so a
caller on the hot path encodes once and the parsing is C (connection.py says why).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import hiredis

from gateway.redis.cluster import ClusterRouter, slot_of
from gateway.redis.connection import RedisConnection, RedisConnectionLost, RedisReplyError
from gateway.redis.endpoint import parse
from gateway.redis.resp import bulk, encode
from gateway.redis.sentinel import SentinelLocator

# what a caller needs besides RedisClient and Script, from the modules that define them
__all__ = ["RedisClient", "RedisConnectionLost", "RedisReplyError", "Script", "encode",
           "slot_of"]

PING = encode("PING")


class Script:
    """A Lua script, called by EVALSHA; `load` and `exists` are its SCRIPT LOAD and SCRIPT
    EXISTS commands."""

    __slots__ = ("exists", "load", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.load = encode("SCRIPT", "LOAD", source)
        self.exists = encode("SCRIPT", "EXISTS", self.sha)

    def call(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        """The EVALSHA command with `keys` and `args`, ready to write."""
        return (b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(keys) + len(args))
                + bulk(self.sha) + bulk(len(keys))
                + b"".join(bulk(a) for a in (*keys, *args)))


class RedisClient:
    """One Redis deployment; every call is bounded by `timeout` or a deadline on the loop's
    clock, and fails with TimeoutError, RedisConnectionLost or OSError when Redis cannot be
    reached in time."""

    def __init__(self, url: str, timeout: float, scripts: Sequence[Script] = ()) -> None:
        self.endpoint = parse(url)
        self.timeout = timeout
        self.scripts = tuple(scripts)
        setup = [script.load for script in self.scripts]
        self.cluster: ClusterRouter | None = None
        self.connection: RedisConnection | None = None
        self.sentinel: SentinelLocator | None = None
        if self.endpoint.kind == "cluster":
            self.cluster = ClusterRouter(self.endpoint, timeout, setup=setup)
        else:
            self.sentinel = (SentinelLocator(self.endpoint, timeout)
                             if self.endpoint.kind == "sentinel" else None)
            self.connection = RedisConnection(self.endpoint, timeout, setup=setup,
                                              locate=self.sentinel)
        self.is_cluster = self.cluster is not None

    def nodes(self, slots: Iterable[int]) -> str:
        """On a Cluster, the masters (`host:port`, sorted, joined by `,`) serving `slots`, as
        last learnt ('' before the slot map is known); '' for one Redis."""
        if self.cluster is None:
            return ""
        return ",".join(sorted({self.cluster.owner(slot) for slot in slots}))

    async def run(self, script: Script, packed: bytes, deadline: float, slot: int = 0) -> Any:
        """The reply of `packed`, a call of `script` (Script.call) whose keys live in `slot`
        (on a Cluster; ignored otherwise). An error answer raises RedisReplyError, after the
        NOSCRIPT and READONLY handling of the module docstring."""
        if self.cluster is None:
            connection = self.connection
            assert connection is not None
            reply = await connection.call(packed, deadline)
            if isinstance(reply, hiredis.ReplyError):
                reply = await self._after_error(script, reply, packed, deadline,
                                                connection.call, connection.reconnect)
            return reply
        cluster = self.cluster
        reply = await cluster.call(slot, packed, deadline)
        if isinstance(reply, hiredis.ReplyError):
            reply = await self._after_error(script, reply, packed, deadline,
                                            lambda p, d: cluster.call(slot, p, d))
        return reply

    async def _after_error(self, script: Script, reply: hiredis.ReplyError, packed: bytes,
                           deadline: float, call: Callable[[bytes, float], Awaitable[Any]],
                           reconnect: Callable[[], None] | None = None) -> Any:
        message = str(reply)
        if message.startswith("NOSCRIPT"):
            # SCRIPT FLUSH (a restart drops the connection, and a new one loads the script);
            # within the same deadline: the call as a whole is bounded by the timeout
            loaded = await call(script.load, deadline)
            if not isinstance(loaded, hiredis.ReplyError):
                reply = await call(packed, deadline)
                if not isinstance(reply, hiredis.ReplyError):
                    return reply
                message = str(reply)
        if "READONLY" in message and reconnect is not None:
            # a demoted master (Sentinel failover), also as the answer to the retry after a
            # NOSCRIPT; Redis 6 wraps it: "ERR Error running script ... -READONLY You can't
            # write against a replica"
            reconnect()
        raise RedisReplyError(message)

    async def command(self, packed: bytes, key: str) -> Any:
        """One command about `key` (its reply; a hiredis.ReplyError for an error answer),
        bounded by the timeout: to the one Redis, or to the master of `key`'s slot."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        if self.cluster is not None:
            return await self.cluster.call(slot_of(key), packed, deadline)
        assert self.connection is not None
        return await self.connection.call(packed, deadline)

    async def probe(self, nodes: str = "") -> None:
        """Raises unless Redis answers again and holds the scripts: PING (a new connection
        first, with its SCRIPT LOADs), then SCRIPT EXISTS, and SCRIPT LOAD for a missing one.
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
        for script in self.scripts:
            exists = await connection.call(script.exists, deadline)
            if isinstance(exists, list) and exists and exists[0] == 1:
                continue
            loaded = await connection.call(script.load, deadline)
            if isinstance(loaded, hiredis.ReplyError):
                raise RedisReplyError(str(loaded))

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.sentinel is not None:
            await self.sentinel.close()
        if self.cluster is not None:
            await self.cluster.close()
