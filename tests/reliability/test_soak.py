"""A soak: the shipped production policy (policies/production.yaml) with Redis, at a moderate
paced load, for a while: no error, and RSS, open descriptors, upstream connections and the
Redis key count stay flat.

Three lengths: 15 s in every run (it asserts only what cannot flake: no error, descriptors
back to their count, bounded growth), 2 minutes and 30 minutes in a full run
(scripts/test.sh --full), which also assert flat slopes after a warm-up. The load comes from
`CLIENTS` addresses (X-Forwarded-For from a trusted 127.0.0.1), over the API and the
catch-all route, within the shipped limits, so every answer should be a 200.

Figures: run with `-s`; each soak prints one `RELIABILITY {...}` line with samples' slopes.
"""

from __future__ import annotations

import time

import pytest

from tests.support.chaos_upstream import start_chaos
from tests.support.load import Footprint, PacedLoad, report, slope_per_minute, sockets_from
from tests.support.processes import eventually, run_shipped, stop
from tests.support.redis_server import start_redis
from tests.support.scale import FULL

# a steady load, Redis, 15 s or more: started among the first of the heavy tests
pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=16), pytest.mark.slow]

RATE = 100  # requests per second
CLIENTS = 400  # addresses: 100/s spread over them stays under api (100/min) and global (1000/h)
PATHS = ("/api/v1/campaigns", "/api/v1/calls?limit=10", "/", "/static/app.js")
PRODUCTION_ENV = {"FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com",
                  "TRUSTED_PROXIES": "127.0.0.1/32"}


def client_header(n: int) -> str:
    return f"X-Forwarded-For: 10.{n % CLIENTS // 250}.{n % CLIENTS % 250}.7\r\n"


def redis_keys(redis) -> int:
    return int(redis.command("DBSIZE")[1:].strip())


@pytest.mark.parametrize("seconds", [
    pytest.param(15, id="15s"),
    pytest.param(120, id="2min", marks=[pytest.mark.full, pytest.mark.timeout(400)]),
    pytest.param(1800, id="30min", marks=[pytest.mark.full, pytest.mark.timeout(2400)]),
])
def test_a_soak_with_the_production_policy_and_redis_stays_flat(tmp_path, seconds: int) -> None:
    redis = start_redis(tmp_path / "redis")
    up_port, up = start_chaos()
    gw = run_shipped("production.yaml", f"http://127.0.0.1:{up_port}", tmp_path,
                     env={**PRODUCTION_ENV, "REDIS_URL": redis.url})
    try:
        pid = gw.proc.pid
        start = Footprint.of(pid, up_port)
        keys_start = redis_keys(redis)
        samples: list[tuple[float, Footprint, int]] = []
        # descriptors other than sockets to clients and to the upstream: what a leak would
        # grow (the sockets follow the load's jitter)
        fixed: list[tuple[float, int]] = []
        interval = max(1.0, seconds / 60)
        with PacedLoad(gw.port, RATE, path=lambda n: PATHS[n % len(PATHS)],
                       headers=client_header, connections=32) as load:
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < seconds:
                time.sleep(interval)
                sample = Footprint.of(pid, up_port)
                samples.append((elapsed, sample, redis_keys(redis)))
                fixed.append((elapsed, sample.other_fds - sockets_from(pid, gw.port)))
        summary = load.summary
        # the load's connections closed: what stays is the gateway's own
        eventually(lambda: sockets_from(pid, gw.port) == 0, timeout=10)
        end = Footprint.of(pid, up_port)
    finally:
        stop(gw.proc)
        stop(up)
        redis.stop()
    warm = [s for s in samples if s[0] >= seconds * 0.2]  # after the warm-up
    slopes = {
        "rss_kib_per_min": round(slope_per_minute([(t, f.rss_kib) for t, f, _ in warm]), 1),
        "fds_per_min": round(slope_per_minute([(t, f.fds) for t, f, _ in warm]), 2),
        "fds_not_sockets_per_min": round(slope_per_minute(
            [(t, n) for t, n in fixed if t >= seconds * 0.2]), 2),
        "upstream_sockets_per_min": round(
            slope_per_minute([(t, f.upstream_sockets) for t, f, _ in warm]), 2),
        "redis_keys_per_min": round(slope_per_minute([(t, k) for t, _, k in warm]), 1)}
    figures = {
        "load": summary.figures(),
        "start": str(start), "end": str(end),
        "rss_mib_max": round(max(f.rss_kib for _, f, _ in samples) / 1024, 1),
        "fds_max": max(f.fds for _, f, _ in samples),
        "fds_not_sockets": [fixed[0][1], max(n for _, n in fixed), fixed[-1][1]],
        "upstream_sockets_max": max(f.upstream_sockets for _, f, _ in samples),
        "redis_keys": [keys_start, max(k for _, _, k in samples), samples[-1][2]],
        "slopes_after_warmup": slopes}
    report(f"soak-{seconds}s", **figures)
    assert summary.errors == {} and set(summary.by_status) == {200}, summary
    if FULL:  # on a machine shared with other work, the load's own thread can lag
        assert summary.requests >= RATE * seconds * 0.9, "the load fell behind"
    # bounded whatever the length: descriptors, pooled sockets, keys (one per limit and client)
    assert end.other_fds <= start.other_fds + 2, f"descriptors leaked: {start} -> {end}"
    assert max(f.upstream_sockets for _, f, _ in samples) <= 32
    assert max(k for _, _, k in samples) <= 3 * CLIENTS + 10
    assert end.rss_kib - start.rss_kib < 30 * 1024
    if seconds >= 120:  # long enough for a slope to mean something
        assert slopes["rss_kib_per_min"] < 512, "RSS keeps growing"
        # growth only: descriptors and keys follow the load's jitter both ways
        assert slopes["fds_not_sockets_per_min"] < 0.5, "descriptors keep growing"
        assert slopes["redis_keys_per_min"] < 0.05 * CLIENTS, "Redis keys keep growing"
