"""The gateway's Redis Cluster routing (gateway/redis/cluster.py) against a real
3-node cluster: calls go to the slot's master, a slot moved to another node (MOVED) and a slot
being migrated (ASK) are followed, the slot map is learnt from any seed that answers, and
CLUSTER SLOTS replies are read as Redis writes them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.redis.cluster import ClusterRouter, redirect, slot_of, slot_ranges
from gateway.redis.endpoint import parse
from gateway.redis.resp import encode
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.redis_cluster import RedisCluster, start_redis_cluster
from tests.support.redis_server import RedisServer

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("redis_cluster_router")

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    started = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster-router"))
    yield started
    started.stop()


def node_id(node: RedisServer) -> str:
    reply = node.command("CLUSTER", "MYID")
    return reply.split(b"\r\n")[1].decode()


def holder(cluster: RedisCluster, slot: int) -> int:
    """Index of the node serving `slot`, as the cluster itself says (CLUSTER NODES)."""
    reply = cluster.nodes[0].command("CLUSTER", "NODES")  # a bulk string: $len, then text
    for line in reply.split(b"\r\n", 1)[1].decode().splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for part in fields[8:]:
            if part.startswith("["):
                continue
            low, _, high = part.partition("-")
            if int(low) <= slot <= int(high or low):
                return cluster.ports.index(port)
    raise AssertionError(f"no node serves slot {slot}")


def move_slot(cluster: RedisCluster, slot: int, to: int) -> None:
    """Give an empty slot to node `to`, told to every node (no key migration needed)."""
    target = node_id(cluster.nodes[to])
    for node in cluster.nodes:
        assert node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target).startswith(b"+OK")


def get(node: RedisServer, key: str) -> bytes:
    return node.command("GET", key)


def run(coro):
    return asyncio.run(coro)


def router_for(cluster: RedisCluster, seeds: str | None = None) -> ClusterRouter:
    endpoint = parse(seeds or cluster.url)
    return ClusterRouter(endpoint, TIMEOUT, setup=[])


async def call(router: ClusterRouter, key: str, *args: str):
    loop = asyncio.get_running_loop()
    return await router.call(key_slot(key.encode()), encode(*args), loop.time() + TIMEOUT)


@pytest.mark.integration
def test_calls_go_to_the_master_of_the_key_slot(cluster: RedisCluster) -> None:
    keys = [f"route{{t{n}}}" for n in range(12)]

    async def main() -> None:
        router = router_for(cluster)
        try:
            for key in keys:
                assert await call(router, key, "SET", key, "v") == b"OK"
        finally:
            await router.close()
        # one connection per master, no more
        assert len(router.connections) == 3

    run(main())
    for key in keys:
        where = holder(cluster, key_slot(key.encode()))
        assert get(cluster.nodes[where], key).endswith(b"v\r\n")


@pytest.mark.integration
def test_a_dead_seed_is_skipped_when_learning_the_map(cluster: RedisCluster) -> None:
    # 127.0.0.1:1 refuses; the next seed answers CLUSTER SLOTS
    seeds = f"redis+cluster://127.0.0.1:1,127.0.0.1:{cluster.nodes[1].port}"

    async def main() -> None:
        router = router_for(cluster, seeds)
        try:
            assert await call(router, "seed{x}", "SET", "seed{x}", "1") == b"OK"
            assert router.owner(key_slot(b"seed{x}")) != ""
        finally:
            await router.close()

    run(main())


@pytest.mark.integration
def test_a_moved_slot_is_followed_and_remembered(cluster: RedisCluster) -> None:
    key = "moving{m}"
    slot = key_slot(key.encode())
    home = holder(cluster, slot)
    other = (home + 1) % 3

    async def main() -> None:
        router = router_for(cluster)
        try:
            assert await call(router, key, "PING") == b"PONG"  # learns the map
            assert router.owner(slot) == f"127.0.0.1:{cluster.nodes[home].port}"
            move_slot(cluster, slot, other)
            # the old master answers MOVED; the call is repeated on the new one
            assert await call(router, key, "SET", key, "moved") == b"OK"
            assert router.owner(slot) == f"127.0.0.1:{cluster.nodes[other].port}"
        finally:
            await router.close()
            cluster.nodes[other].command("DEL", key)
            move_slot(cluster, slot, home)

    run(main())


@pytest.mark.integration
def test_a_slot_being_migrated_is_asked_of_the_importing_node(cluster: RedisCluster) -> None:
    key = "asking{a}"
    slot = key_slot(key.encode())
    home = holder(cluster, slot)
    other = (home + 1) % 3
    source, target = cluster.nodes[home], cluster.nodes[other]

    async def main() -> None:
        router = router_for(cluster)
        try:
            assert await call(router, key, "PING") == b"PONG"
            assert target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING",
                                  node_id(source)).startswith(b"+OK")
            assert source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING",
                                  node_id(target)).startswith(b"+OK")
            # the key is not on the source: it answers ASK, the target takes it after ASKING
            assert await call(router, key, "SET", key, "asked") == b"OK"
            # only the importing node holds it (counted locally, no redirect)
            assert target.command("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == b":1\r\n"
            assert source.command("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == b":0\r\n"
            # ASK is for one call: the slot still belongs to the source
            assert router.owner(slot) == f"127.0.0.1:{source.port}"
        finally:
            await router.close()
            for node in (source, target):
                node.command("CLUSTER", "SETSLOT", str(slot), "STABLE")
            # the target holds a key of a slot it does not serve: hand the slot over,
            # delete the key there, and give the slot back
            move_slot(cluster, slot, other)
            target.command("DEL", key)
            move_slot(cluster, slot, home)

    run(main())


@pytest.mark.integration
def test_the_backend_decides_through_a_moved_slot(cluster: RedisCluster) -> None:
    policy = RateLimitPolicy(name="moved", limit=2, period_ms=3_600_000,
                             algorithm="fixed_window")
    key = "gwmove:{ip=10.9.8.7}:moved:f3600000"
    slot = key_slot(key.encode())
    home = holder(cluster, slot)
    other = (home + 2) % 3

    async def main() -> list[bool]:
        backend = RedisBackend(cluster.url, TIMEOUT)
        try:
            first = (await backend.check(Checks([(policy, key)])))[0]
            cluster.nodes[home].command("DEL", key)
            move_slot(cluster, slot, other)
            admitted = [first]
            for _ in range(3):
                admitted.append((await backend.check(Checks([(policy, key)])))[0])
            return admitted
        finally:
            await backend.close()

    try:
        # the counter starts again on the new node: 2 admitted there, then refused
        assert run(main()) == [True, True, True, False]
        assert cluster.nodes[other].command("EXISTS", key) == b":1\r\n"
    finally:
        cluster.nodes[other].command("DEL", key)
        move_slot(cluster, slot, home)


# -- replies as Redis writes them --------------------------------------------------------------

def test_cluster_slots_replies_are_read_with_unknown_hosts_as_the_address_asked() -> None:
    reply = [[0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
             [5461, 16383, [b"", 7001, b"id2"]]]
    assert slot_ranges(reply, "10.0.0.9:7001") == [(0, 5460, "10.0.0.1:7000"),
                                                   (5461, 16383, "10.0.0.9:7001")]
    assert slot_ranges([[0, 5, [b"?", 7001]]], "[::1]:7001") == [(0, 5, "[::1]:7001")]
    assert slot_ranges([[0, 16384, [b"h", 1]]], "h:1") is None  # slot out of range
    assert slot_ranges(b"ERR", "h:1") is None


def test_redirects_are_parsed_including_unbracketed_ipv6() -> None:
    assert redirect("MOVED 3999 127.0.0.1:6381") == ("MOVED", 3999, "127.0.0.1:6381")
    assert redirect("ASK 1 ::1:6381") == ("ASK", 1, "[::1]:6381")
    assert redirect("MOVED 16384 h:1") is None
    assert redirect("MOVED x h:1") is None
    assert redirect("NOSCRIPT No matching script") is None


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab{}:é"), max_size=12) | st.text(max_size=30))
def test_the_slot_hash_agrees_with_redis_py(key: str) -> None:
    # hash tags: the first `{` and the first `}` after it, an empty tag hashes the whole key
    assert slot_of(key) == key_slot(key.encode())
