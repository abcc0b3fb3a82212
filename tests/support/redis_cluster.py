"""A real 3-node Redis Cluster for the tests, on free loopback ports.

Each node is a `redis-server --cluster-enabled yes` (the Redis 6.2 binary of redis_server.py)
in its own working directory. The nodes are joined with CLUSTER MEET and the 16384 slots are
split into three ranges with CLUSTER ADDSLOTS (6.2 has no ADDSLOTSRANGE); start-up returns once
every node reports `cluster_state:ok`. No replicas: the tests need sharding, not failover.

A test may give its own slot layout (`slots`: the slots of each node), and take one node away
and back: `node.kill()` then `restart_node` (same port and directory, so it reads its
nodes.conf and rejoins with its id and slots), or `node.pause()`/`node.resume()`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import free_port
from tests.support.redis_server import RedisServer

SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too (processes.free_port draws from
    10000-19999, so the bus port exists and lies outside every worker's block)."""
    return free_port(also=(BUS_OFFSET,))


def slot_ranges(nodes: int) -> list[range]:
    """The 16384 slots in `nodes` contiguous ranges, as redis-cli --cluster create splits them."""
    bounds = [SLOTS * i // nodes for i in range(nodes + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(nodes)]


@dataclass
class RedisCluster:
    workdir: Path
    size: int = 3
    node_timeout_ms: int = 2000
    nodes: list[RedisServer] = field(default_factory=list)
    slots: Sequence[Sequence[int]] | None = None  # per node; None: slot_ranges(size)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self, timeout: float = 30) -> RedisCluster:
        try:
            for _ in range(self.size):
                port = free_cluster_port()
                node = RedisServer(port, self.workdir / f"node-{port}", (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms)))
                self.nodes.append(node)  # appended first, so stop() also ends a failed start
                node.start()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                _expect_ok(first.command("CLUSTER", "MEET", "127.0.0.1", str(node.port)))
            layout = self.slots if self.slots is not None else slot_ranges(self.size)
            for node, slots in zip(self.nodes, layout, strict=True):
                _expect_ok(node.command("CLUSTER", "ADDSLOTS", *map(str, slots)))
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def info(self, node: RedisServer) -> dict[str, str]:
        reply = node.command("CLUSTER", "INFO").decode(errors="replace")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node sees all nodes, all slots assigned and cluster_state:ok."""
        deadline = time.monotonic() + timeout
        while True:
            infos = []
            with contextlib.suppress(OSError):  # a node not answering yet: ask again
                infos = [self.info(n) for n in self.nodes]
            if len(infos) == self.size and all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == str(SLOTS)
                    and i.get("cluster_known_nodes") == str(self.size) for i in infos):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ok after {timeout}s: {infos}")
            time.sleep(0.05)

    def restart_node(self, index: int) -> RedisServer:
        """Starts node `index` again (after `kill()`) on its port and in its directory: it reads
        its nodes.conf and rejoins with the same id and slots, empty (nothing is saved).
        Returns once it answers PING; its `cluster_state` may still be `fail` for a while."""
        old = self.nodes[index]
        node = RedisServer(old.port, old.workdir, old.extra)
        self.nodes[index] = node  # first, so stop() also ends a failed start
        return node.start()

    def command(self, *args: str) -> list[bytes]:
        """One command on every node (FLUSHALL, SCRIPT FLUSH, ...); the replies in node order."""
        return [n.command(*args) for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _expect_ok(reply: bytes) -> None:
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"redis cluster set-up failed: {reply!r}")


def start_redis_cluster(workdir: Path, size: int = 3,
                        slots: Sequence[Sequence[int]] | None = None) -> RedisCluster:
    return RedisCluster(workdir, size, slots=slots).start()
