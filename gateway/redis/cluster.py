"""Redis Cluster: which master serves a slot, and one pipelined connection (connection.py)
per master.

- The slot map comes from `CLUSTER SLOTS`, asked of a seed or a known node on first use and
  again, in the background and at most every REFRESH_EVERY, after a node fails or redirects.
- `MOVED` (a slot now served elsewhere): the call is repeated once on the named node, which
  serves the slot from then on. `ASK` (a slot being migrated): `ASKING` and the call go to
  the named node together, once; the map is unchanged.
- Each master has its own connection, so a failing node fails only the calls for its slots:
  the others keep their connections and their pipelining (the limiter keeps one breaker per
  node). A `CLUSTERDOWN` or `TRYAGAIN` answer is that call's error, nothing more.

Why not redis-py's RedisCluster: on a node's connection error or CLUSTERDOWN it closes the
connections to every node and sleeps 250 ms, so one restarted node disturbed the keys of the
healthy ones (tests/test_ratelimit_faults_cluster.py), and its per-call cost is the one the
standalone path shed (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from binascii import crc_hqx
from typing import Any

import hiredis

from gateway.redis.connection import RedisConnection, RedisConnectionLost
from gateway.redis.endpoint import Endpoint
from gateway.redis.resp import encode

log = logging.getLogger("gateway.redis")

SLOTS = 16384
REFRESH_EVERY = 0.1  # s: background map refreshes at most this often
CLUSTER_SLOTS = encode("CLUSTER", "SLOTS")
ASKING = encode("ASKING")


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


def node_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def slot_ranges(reply: Any, asked: str) -> list[tuple[int, int, str]] | None:
    """(first slot, last slot, master's node name) from a CLUSTER SLOTS reply; None if the
    reply is unusable. An empty or `?` host means the address asked (Redis 7)."""
    if not isinstance(reply, list):
        return None
    asked_host = asked.rpartition(":")[0].strip("[]")
    out = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
            return None
        start, end, master = entry[0], entry[1], entry[2]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < SLOTS):
            return None
        raw_host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        host = asked_host if raw_host in ("", "?") else raw_host
        out.append((start, end, node_name(host, int(master[1]))))
    return out


def redirect(message: str) -> tuple[str, int, str] | None:
    """(kind, slot, node name) of a `MOVED 3999 127.0.0.1:6381` or `ASK ...` answer (an IPv6
    address comes unbracketed: `MOVED 3999 ::1:6381`)."""
    kind, _, rest = message.partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, address = rest.partition(" ")
    host, _, port = address.rpartition(":")
    if not slot.isdigit() or int(slot) >= SLOTS or not host or not port.isdigit():
        return None
    return kind, int(slot), node_name(host, int(port))


class ClusterRouter:
    """Calls for a slot go to its master's connection; see the module docstring."""

    def __init__(self, endpoint: Endpoint, timeout: float, setup: list[bytes]) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.setup = setup
        self.owners: list[str | None] = [None] * SLOTS  # node name per slot
        self.connections: dict[str, RedisConnection] = {}
        self._refresh: asyncio.Future[None] | None = None
        self._refreshed_at = float("-inf")
        self._closed = False

    def owner(self, slot: int) -> str:
        """The node serving `slot` as last learnt; '' before the map is known."""
        return self.owners[slot] or ""

    def connection(self, address: str) -> RedisConnection:
        conn = self.connections.get(address)
        if conn is None:
            host, _, port = address.rpartition(":")
            node = dataclasses.replace(self.endpoint, kind="standalone",
                                       hosts=((host.strip("[]"), int(port)),))
            conn = self.connections[address] = RedisConnection(node, self.timeout, self.setup)
        return conn

    async def call(self, slot: int, packed: bytes, deadline: float) -> Any:
        """The reply of `packed` from the master of `slot` (a hiredis.ReplyError for an error
        answer other than a redirect); raises like RedisConnection.call."""
        if self._closed:
            raise RedisConnectionLost("connection closed")
        address = self.owners[slot]
        if address is None:
            await self._wait_for_map(deadline)
            address = self.owners[slot]
            if address is None:
                raise RedisConnectionLost(f"no node serves slot {slot}")
        try:
            reply = await self.connection(address).call(packed, deadline)
        except (OSError, TimeoutError):  # RedisConnectionLost is an OSError
            self.refresh_soon()  # a failover may have given the slot to a replica
            raise
        if isinstance(reply, hiredis.ReplyError):
            moved = redirect(str(reply))
            if moved is not None:
                return await self._redirected(moved, packed, deadline)
        return reply

    async def _redirected(self, moved: tuple[str, int, str], packed: bytes,
                          deadline: float) -> Any:
        kind, slot, address = moved
        conn = self.connection(address)
        if kind == "MOVED":
            self.owners[slot] = address
            self.refresh_soon()  # a resharding moves more than one slot
            return await conn.call(packed, deadline)
        # one write: the ASKING flag holds for the next command on that connection only
        _, reply = await asyncio.gather(conn.call(ASKING, deadline),
                                        conn.call(packed, deadline))
        return reply

    def refresh_soon(self) -> None:
        """Ask for the slot map again in the background, unless asked just now."""
        loop = asyncio.get_running_loop()
        if self._closed or (self._refresh is not None and not self._refresh.done()):
            return
        if loop.time() - self._refreshed_at < REFRESH_EVERY:
            return
        self._start_refresh(loop.time() + max(1.0, self.timeout * 10))

    async def _wait_for_map(self, deadline: float) -> None:
        if self._refresh is None or self._refresh.done():
            self._start_refresh(deadline)
        assert self._refresh is not None
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(self._refresh)

    def _start_refresh(self, deadline: float) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        self._refresh = asyncio.ensure_future(self._load_map(deadline))
        # a background refresh that fails is retried on the next failure or unknown slot
        self._refresh.add_done_callback(
            lambda f: f.cancelled() or f.exception())

    async def _load_map(self, deadline: float) -> None:
        """CLUSTER SLOTS from the known masters, then the seeds; the first answer wins. Each
        node gets at most `timeout`, so a stalled one does not use up the whole deadline."""
        loop = asyncio.get_running_loop()
        seeds = [node_name(h, p) for h, p in self.endpoint.hosts]
        last: BaseException | None = None
        for address in dict.fromkeys([*self.connections, *seeds]):
            try:
                reply = await self.connection(address).call(
                    CLUSTER_SLOTS, min(deadline, loop.time() + self.timeout))
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            ranges = slot_ranges(reply, address)
            if ranges is None:
                last = RedisConnectionLost(f"unusable CLUSTER SLOTS answer from {address}")
                continue
            owners: list[str | None] = [None] * SLOTS
            for start, end, name in ranges:
                owners[start:end + 1] = [name] * (end + 1 - start)
            self.owners = owners
            self._forget_unused()
            return
        raise RedisConnectionLost(f"no cluster node answered CLUSTER SLOTS: {last!r}")

    def _forget_unused(self) -> None:
        """Close connections to nodes that serve no slot and are no seed (removed nodes)."""
        keep = set(self.owners) | {node_name(h, p) for h, p in self.endpoint.hosts}
        for address in [a for a in self.connections if a not in keep]:
            conn = self.connections.pop(address)
            task = asyncio.ensure_future(conn.close())
            task.add_done_callback(lambda f: f.exception())

    async def close(self) -> None:
        self._closed = True
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(BaseException):
                await self._refresh
        for conn in self.connections.values():
            await conn.close()
