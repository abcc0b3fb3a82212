"""The fault scenarios of test_ratelimit_faults.py against a real 3-node Redis Cluster: the node
that holds the load's counters killed (SIGKILL, then started again on the same port and
directory, so it rejoins with its nodes.conf, empty) or stalled (SIGSTOP, then SIGCONT), under
the same paced load of 200 requests/s through a real gateway process.

- `failure_mode: open`: zero 5xx and zero transport errors, in-process limits apply while the
  node is away, and Redis decides again within 2 s of the node being back.
- `failure_mode: closed`: 503 problem+json while the node is away, no request slower than
  MAX_LATENCY, 200s again within 2 s of the node being back.

"Back" is when the node answers PING again *and* reports `cluster_state:ok` itself: a
restarted master answers every key command with CLUSTERDOWN until then (Redis keeps a rebooted
master's state at fail for 2 s, its CLUSTER_WRITABLE_DELAY). Both times are printed, with the
time until every node reports ok. The outage (~1.5 s) is shorter than `cluster-node-timeout`
(2 s), so the other nodes stay ok and never flag the node as failing.

Where the counters live: the load's key has the tag `{ip=127.0.0.1}` (slot 2546) and the small
global limits `{global}` (slot 10408); with the usual three even slot ranges they would live on
different nodes. The cluster of this module uses those ranges but gives the slot of `{global}` to
the node that owns `{ip=127.0.0.1}`, so one node holds every key the tests assert on, and the
keys are exactly the gateway's usual keys (no special prefix). Each test finds that node from
the cluster itself (CLUSTER KEYSLOT, CLUSTER NODES) and takes it away.

The cluster is shared by the module; each test brings its node back and the `healthy` fixture
checks, after every test, that every node answers and reports `cluster_state:ok` (and mends the
cluster first if a test failed half-way).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from tests.support.metrics import redis_errors, redis_successes
from tests.support.processes import stop, wait_until
from tests.support.redis_cluster import RedisCluster, slot_ranges, start_redis_cluster
from tests.support.redis_server import RedisServer
from tests.test_ratelimit_faults import (
    AFTER,
    FAULTS,
    LIMIT,
    OUTAGE,
    RECOVERY,
    WARMUP,
    ClosedRun,
    Load,
    OpenRun,
    bulk_key,
    decided_after,
    faulty_gateway,
    get,
    global_key,
    key_exists,
    process_state,
    summary,
    window_count,
)

# a load generator at a fixed rate, latency bounds: alone (tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

LOAD_TAG = bulk_key("")  # `{ip=127.0.0.1}:bulk:...`: the slot is the tag's, whatever the prefix
GLOBAL_TAG = global_key("", "shared")


def layout() -> list[list[int]]:
    """The usual three slot ranges, with the slot of `{global}` moved to the node that owns
    `{ip=127.0.0.1}`."""
    nodes = [list(r) for r in slot_ranges(3)]
    load_slot, global_slot = key_slot(LOAD_TAG.encode()), key_slot(GLOBAL_TAG.encode())
    owner = next(i for i, slots in enumerate(nodes) if load_slot in slots)
    for slots in nodes:
        if global_slot in slots:
            slots.remove(global_slot)
    nodes[owner].append(global_slot)
    return nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    started = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster-faults"),
                                  slots=layout())
    yield started
    started.stop()


def mend(cluster: RedisCluster) -> None:
    """Every node running (a killed one started again, a stopped one continued), then every
    node answering with `cluster_state:ok` (bounded)."""
    for i, node in enumerate(cluster.nodes):
        if node.proc is None or node.proc.poll() is not None:
            cluster.restart_node(i)
        elif process_state(node) == "T":
            node.resume()
    cluster.wait_ok(15)


@pytest.fixture
def healthy(cluster: RedisCluster) -> Iterator[RedisCluster]:
    mend(cluster)
    yield cluster
    mend(cluster)  # raises if the cluster does not report ok again within the bound


# --- the cluster's own view -------------------------------------------------------------------

def bulk_text(raw: bytes) -> str:
    """The text of a RESP bulk-string reply."""
    assert raw.startswith(b"$"), raw
    return raw.split(b"\r\n", 1)[1].decode()


def owner(cluster: RedisCluster, key: str) -> int:
    """The index of the master that serves `key`, as the cluster itself says."""
    first = cluster.nodes[0]
    slot = int(first.command("CLUSTER", "KEYSLOT", key)[1:].split(b"\r\n")[0])
    for line in bulk_text(first.command("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated: not this layout
                continue
            low, _, high = part.partition("-")
            if int(low) <= slot <= int(high or low):
                return cluster.ports.index(port)
    raise AssertionError(f"no node serves slot {slot}")


def victim(cluster: RedisCluster, prefix: str) -> int:
    """The node holding the load's key; it must hold the global keys too (see layout())."""
    index = owner(cluster, bulk_key(prefix))
    for policy in ("outage", "shared"):
        assert owner(cluster, global_key(prefix, policy)) == index, policy
    return index


def cluster_state(node: RedisServer) -> str:
    with contextlib.suppress(OSError):
        for line in bulk_text(node.command("CLUSTER", "INFO")).splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1]
    return "unreachable"


def answers_ping(node: RedisServer) -> bool:
    with contextlib.suppress(OSError):
        return node.command("PING").startswith(b"+PONG")
    return False


# --- faults -----------------------------------------------------------------------------------

@dataclass
class Back:
    """When the node came back, in time.monotonic(): `restored` (restart begun, or SIGCONT
    sent), `ping` (answers PING), `ok` (reports cluster_state:ok itself: the node counts as back
    from here), `all_ok` (every node reports ok)."""

    restored: float
    ping: float
    ok: float
    all_ok: float

    @property
    def at(self) -> float:
        return max(self.ping, self.ok)

    def describe(self, kind: str) -> str:
        what = "restart" if kind == "kill" else "SIGCONT"
        return (f"{what}->PING={self.ping - self.restored:.3f} s "
                f"{what}->node ok={self.ok - self.restored:.3f} s "
                f"{what}->all nodes ok={self.all_ok - self.restored:.3f} s")


class NodeFault:
    """Takes one cluster node away (SIGKILL, or SIGSTOP) and brings it back (started again on
    its port and directory, or SIGCONT). `inject` returns once the node is surely away;
    `restore` returns once it answers PING and reports cluster_state:ok (the Back times)."""

    def __init__(self, kind: str, cluster: RedisCluster, index: int) -> None:
        self.kind = kind
        self.cluster = cluster
        self.index = index
        self.others_during: list[str] = []

    @property
    def node(self) -> RedisServer:
        return self.cluster.nodes[self.index]

    def inject(self) -> None:
        if self.kind == "kill":
            self.node.kill()  # returns after the process is reaped
        else:
            self.node.pause()
            wait_until(lambda: process_state(self.node) == "T", timeout=5, interval=0.005)

    def restore(self) -> Back:
        # what the other nodes think just before the node comes back
        self.others_during = [cluster_state(n) for i, n in enumerate(self.cluster.nodes)
                              if i != self.index]
        restored = time.monotonic()
        if self.kind == "kill":
            self.cluster.restart_node(self.index)  # returns once it answers PING
        else:
            self.node.resume()
            wait_until(lambda: answers_ping(self.node), timeout=5, interval=0.005)
        ping = time.monotonic()
        wait_until(lambda: cluster_state(self.node) == "ok", timeout=10, interval=0.005)
        ok = time.monotonic()
        wait_until(lambda: all(cluster_state(n) == "ok" for n in self.cluster.nodes),
                   timeout=10, interval=0.005)
        return Back(restored, ping, ok, time.monotonic())


# --- failure_mode: open -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAULTS)
def test_open_mode_serves_through_a_node_outage_and_shares_limits_again(
    tmp_path, upstream, healthy: RedisCluster, kind: str
) -> None:
    cluster = healthy
    prefix = f"gwcluo{kind}:"
    fault = NodeFault(kind, cluster, victim(cluster, prefix))
    gw = faulty_gateway(tmp_path, upstream.url, cluster.url, "open", prefix)
    try:
        # before the fault Redis decides: the shared limit is used up in Redis only
        assert [get(gw, "/shared").status for _ in range(LIMIT + 1)] == [200] * LIMIT + [429]
        assert window_count(fault.node, global_key(prefix, "shared")) == LIMIT
        errors_before = redis_errors(gw)
        assert errors_before == 0

        with Load(gw.url + "/load") as load:
            wait_until(lambda: load.answered() >= WARMUP, timeout=10)
            fault.inject()
            away_at = time.monotonic()
            mark = load.sent
            # in-process limits apply: a counter that sees traffic only while the node is away...
            outage = [get(gw, "/outage").status for _ in range(LIMIT + 1)]
            # ...and one that Redis has used up, that the in-process state has not
            shared_away = get(gw, "/shared").status
            load.wait_sent(mark + OUTAGE)
            errors_during = redis_errors(gw)
            successes_before = redis_successes(gw)
            restoring_at = time.monotonic()

            back = fault.restore()
            back_mark = load.sent
            wait_until(lambda: redis_successes(gw) > successes_before, timeout=RECOVERY + 3,
                       interval=0.01)
            resumed = time.monotonic()
            key_recovery = None
            if kind == "kill":  # the restarted node is empty: the load's counter reappears
                wait_until(lambda: key_exists(fault.node, bulk_key(prefix)),
                           timeout=RECOVERY + 3, interval=0.01)
                key_recovery = time.monotonic() - back.at
            after = decided_after(gw, kind, fault.node, prefix)
            load.wait_sent(back_mark + AFTER)
        samples = load.samples
        errors_after = redis_errors(gw)
    finally:
        stop(gw.proc)

    recovery = resumed - back.at
    during = [s for s in samples if s.sent >= away_at and s.done <= restoring_at]
    rejoin = [s for s in samples if s.sent >= restoring_at and s.done <= back.at]
    max_latency = max(s.latency for s in samples)
    max_during = max(s.latency for s in during)
    print(f"\n[cluster open/{kind}] node :{fault.node.port} statuses={summary(samples)} "
          f"outage samples={len(during)} rejoin samples={len(rejoin)} "
          f"max latency={max_latency * 1000:.0f} ms (outage {max_during * 1000:.0f} ms) "
          f"other nodes during outage={fault.others_during} {back.describe(kind)} "
          f"recovery={recovery:.3f} s after node ok ({resumed - back.ping:.3f} s after PING, "
          f"{resumed - back.restored:.3f} s after {'restart' if kind == 'kill' else 'SIGCONT'})"
          f" key recovery={key_recovery and round(key_recovery, 3)} "
          f"redis errors {errors_before:.0f}->{errors_during:.0f}->{errors_after:.0f}")

    OpenRun(samples, during, outage, shared_away, errors_before, errors_during, recovery,
            key_recovery, kind, after).check()


# --- failure_mode: closed ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAULTS)
def test_closed_mode_refuses_fast_during_a_node_outage_and_recovers(
    tmp_path, upstream, healthy: RedisCluster, kind: str
) -> None:
    cluster = healthy
    prefix = f"gwcluc{kind}:"
    fault = NodeFault(kind, cluster, victim(cluster, prefix))
    gw = faulty_gateway(tmp_path, upstream.url, cluster.url, "closed", prefix)
    try:
        assert get(gw, "/x").status == 200
        assert key_exists(fault.node, bulk_key(prefix))
        errors_before = redis_errors(gw)
        with Load(gw.url + "/load") as load:
            wait_until(lambda: load.answered() >= WARMUP, timeout=10)
            fault.inject()
            away_at = time.monotonic()
            mark = load.sent
            refused = get(gw, "/x")
            load.wait_sent(mark + OUTAGE)
            errors_during = redis_errors(gw)
            restoring_at = time.monotonic()
            back = fault.restore()
            load.wait_sent(load.sent + AFTER)
        samples = load.samples
    finally:
        stop(gw.proc)

    during = [s for s in samples if s.sent >= away_at and s.done <= restoring_at]
    rejoin = [s for s in samples if s.sent >= restoring_at and s.done <= back.at]
    late = [s for s in samples if s.status != 200 and s.done > back.at]
    recovery = max((s.done - back.at for s in late), default=0.0)
    max_latency = max(s.latency for s in samples)
    max_during = max(s.latency for s in during)
    print(f"\n[cluster closed/{kind}] node :{fault.node.port} statuses={summary(samples)} "
          f"outage samples={len(during)} outage statuses={summary(during)} "
          f"rejoin statuses={summary(rejoin)} max latency={max_latency * 1000:.0f} ms "
          f"(outage {max_during * 1000:.0f} ms) other nodes during outage="
          f"{fault.others_during} {back.describe(kind)} recovery={recovery:.3f} s after node ok "
          f"({back.at + recovery - back.ping:.3f} s after PING) "
          f"redis errors {errors_before:.0f}->{errors_during:.0f}")

    ClosedRun(refused, samples, during, errors_before, errors_during, recovery).check()


# --- one breaker per node ---------------------------------------------------------------------

TENANT_ROUTE = """\
  - name: tenant
    match: {path_prefix: /tenant}
    rate_limits: [tenant]
"""
TENANT_LIMIT = "  tenant: {limit: 100000, per: 1h, key: 'header:X-Tenant'}\n"


def tenant_elsewhere(cluster: RedisCluster, index: int) -> tuple[str, int]:
    """An X-Tenant value whose counter lives on another node than `index`, and that node."""
    for n in range(1000):
        value = f"t{n}"
        home = owner(cluster, f"{{h.x-tenant={value}}}")
        if home != index:
            return value, home
    raise AssertionError("no tenant value hashes off the node")


@pytest.mark.parametrize("kind", FAULTS)
def test_a_failing_node_keeps_requests_on_healthy_nodes_decided_by_redis(
    tmp_path, upstream, healthy: RedisCluster, kind: str
) -> None:
    """`closed`: while the node holding the load's counters is away, the load gets 503s, but a
    second load whose counters live on a healthy node is still decided by Redis (200s, each
    counted there). Its successes must not keep the failing node's breaker closed either: the
    requests that reach the failing node stay few (the first ones and a probe every 500 ms)."""
    cluster = healthy
    prefix = f"gwclun{kind}:"
    fault = NodeFault(kind, cluster, victim(cluster, prefix))
    tenant, home = tenant_elsewhere(cluster, fault.index)
    tenant_key = f"{prefix}{{h.x-tenant={tenant}}}:tenant:s3600000"
    gw = faulty_gateway(tmp_path, upstream.url, cluster.url, "closed", prefix,
                        routes=TENANT_ROUTE, limits=TENANT_LIMIT)
    try:
        with Load(gw.url + "/load") as load, \
                Load(gw.url + "/tenant", headers={"X-Tenant": tenant}) as other:
            wait_until(lambda: load.answered() >= WARMUP and other.answered() >= WARMUP,
                       timeout=10)
            errors_before = redis_errors(gw)
            fault.inject()
            away_at = time.monotonic()
            load.wait_sent(load.sent + OUTAGE)
            errors_during = redis_errors(gw) - errors_before
            restoring_at = time.monotonic()
            fault.restore()
        loaded, tenants = load.samples, other.samples
    finally:
        stop(gw.proc)

    def outage(samples: list) -> list:
        return [s for s in samples if s.sent >= away_at and s.done <= restoring_at]

    print(f"\n[cluster per-node/{kind}] load during outage={summary(outage(loaded))} "
          f"tenant during outage={summary(outage(tenants))} tenant overall={summary(tenants)} "
          f"redis errors during outage={errors_during:.0f}")
    # the outage lasts until the first load has sent OUTAGE requests; the tenant's load runs
    # beside it unwaited, and on a busy machine sent 208 of its 300 meanwhile: enough to show
    # its node decided throughout (all 200, each counted there, below)
    assert len(outage(tenants)) >= OUTAGE // 2
    assert summary(outage(loaded)) == {503: len(outage(loaded))}
    assert summary(tenants) == {200: len(tenants)}, "a healthy node's keys were refused"
    # every tenant request was counted in Redis, on its node
    assert window_count(cluster.nodes[home], tenant_key) == len(tenants)
    # the failing node's breaker opened and stayed open between probes: a breaker that the
    # tenant's successes kept closing would let every load request wait for the timeout
    assert errors_during < OUTAGE / 3
