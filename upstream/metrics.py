"""Prometheus metrics of the API (GET /metrics): requests, durations, the DB pool and backups.

Backup figures are read from BACKUP_DIR at scrape time (the backup tool runs as a separate
process, often on a schedule), so they are right even just after a restart.

upstream_http_requests_total{route,method,status}       counter
upstream_http_request_duration_seconds{route,method}    histogram
upstream_db_pool_size / upstream_db_pool_in_use          gauges
upstream_backup_last_timestamp_seconds                   newest backup's creation time
upstream_backup_last_size_bytes                          its size
upstream_backup_last_verified                            1 verified, 0 failed/never verified
upstream_backup_last_verified_timestamp_seconds          newest backup verified successfully
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector


class _PoolCollector(Collector):
    def __init__(self, pool_stats: Callable[[], tuple[int, int]]) -> None:
        self._pool_stats = pool_stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size, in_use = self._pool_stats()
        yield GaugeMetricFamily("upstream_db_pool_size", "Connections the pool keeps.",
                                value=size)
        yield GaugeMetricFamily("upstream_db_pool_in_use", "Pool connections checked out.",
                                value=in_use)


class _BackupCollector(Collector):
    def __init__(self, backup_dir: Path) -> None:
        self._backup_dir = backup_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from upstream.backup.catalog import list_local
        backups = list_local(self._backup_dir)
        newest = backups[-1] if backups else None
        verified = [b for b in backups if b.verified]
        families = {
            "upstream_backup_last_timestamp_seconds": (
                "Creation time of the newest backup.", newest and newest.created.timestamp()),
            "upstream_backup_last_size_bytes": (
                "Size of the newest backup file.", newest and newest.size),
            "upstream_backup_last_verified": (
                "1 when the newest backup was verified, 0 when it failed or was never verified.",
                newest and (1 if newest.verified else 0)),
            "upstream_backup_last_verified_timestamp_seconds": (
                "Creation time of the newest backup whose verification passed.",
                verified and verified[-1].created.timestamp()),
        }
        for name, (doc, value) in families.items():
            if value is not None and value is not False and value != []:
                yield GaugeMetricFamily(name, doc, value=float(value))


class Metrics:
    def __init__(self, backup_dir: Path, pool_stats: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("upstream_http_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram("upstream_http_request_duration_seconds",
                                  "Time to answer a request.", ["route", "method"],
                                  buckets=(.005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10),
                                  registry=self.registry)
        self.registry.register(_PoolCollector(pool_stats))
        self.registry.register(_BackupCollector(backup_dir))

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(time.perf_counter() - started)

    def render(self) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
