"""Prometheus metrics, with the names and labels fixed in DESIGN.md ("Metrics").

Labels are bounded: `route` is a route name from the policy or `unmatched`, `method` a standard
method or `OTHER`, `source` says whether the gateway or the upstream made the response.

With several workers (`--workers N`) the supervisor sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client keeps each worker's values in files there, and a scrape of any
worker sums them all (MultiProcessCollector). A worker that dies leaves its counter files in
place, so a replacement never makes a counter go down within a scrape series.
"""

from __future__ import annotations

import glob
import os
import platform
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from gateway import __version__

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry(auto_describe=True)
# request latency buckets include the SLO edges 0.2 s and 1 s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5, 5.0, 10.0)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                              "CONNECT", "TRACE"})

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "Requests answered, by route, method, status and source",
    ["route", "method", "code", "source"], registry=REGISTRY)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds", "Time from request head to the end of the response",
    ["route", "method"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
IN_FLIGHT = Gauge(
    "gateway_http_requests_in_flight", "Requests being handled now", registry=REGISTRY,
    multiprocess_mode="livesum")
OVERLOAD_REFUSALS = Counter(
    "gateway_overload_refusals_total",
    "Requests and connections refused to protect the gateway, by reason "
    "(connections | requests)", ["reason"], registry=REGISTRY)
CLIENT_TIMEOUTS = Counter(
    "gateway_client_timeouts_total",
    "Client connections closed for being too slow, by phase (header: no whole request head "
    "within timeouts.header; send: nothing of an answer read for timeouts.idle); a body too "
    "slow is answered 408 and counted with the requests",
    ["phase"], registry=REGISTRY)
LOOP_LAG = Gauge(
    "gateway_event_loop_lag_seconds",
    "How late the event loop ran a timer, last measured (the worst worker with --workers)",
    registry=REGISTRY, multiprocess_mode="max")
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds", "Time until the upstream's response headers",
    ["upstream"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total", "Upstream failures by kind (connect|timeout|reset|protocol)",
    ["upstream", "kind"], registry=REGISTRY)
TARGET_UP = Gauge(
    "gateway_upstream_target_up", "Whether the balancer may choose this target (0: down by "
    "active health checks, or ejected after connect failures; the least of the workers)",
    ["upstream", "target"], registry=REGISTRY, multiprocess_mode="livemin")
TLS_HANDSHAKES = Counter(
    "gateway_tls_handshakes_total", "TLS handshakes on the public listener: started (a "
    "ClientHello reached certificate selection) and completed; the difference failed",
    ["result"], registry=REGISTRY)
TLS_CERT_EXPIRY = Gauge(
    "gateway_tls_certificate_expiry_timestamp_seconds", "When each certificate of the public "
    "listener expires (seconds since the epoch), by its first name",
    ["certificate"], registry=REGISTRY, multiprocess_mode="min")
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total", "Policy reloads by result (success | failure)",
    ["result"], registry=REGISTRY)
RATELIMIT_DECISIONS = Counter(
    "gateway_ratelimit_decisions_total",
    "Rate-limit decisions by route, policy and decision (allowed | limited | shadow_limited)",
    ["route", "policy", "decision"], registry=REGISTRY)
REDIS_ERRORS = Counter(
    "gateway_redis_errors_total", "Failed or timed-out Redis calls by operation", ["operation"],
    registry=REGISTRY)
REDIS_DURATION = Histogram(
    "gateway_redis_duration_seconds", "Duration of Redis rate-limit calls", registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0))
CSP_REPORTS = Counter(
    "gateway_csp_reports_total", "CSP violation reports received, by result "
    "(accepted | rejected | limited)", ["result"], registry=REGISTRY)
ACCESS_REFUSALS = Counter(
    "gateway_access_refusals_total", "Requests refused by a route's access list (403), by "
    "route and list", ["route", "list"], registry=REGISTRY)
BUILD_INFO = Gauge(
    "gateway_build_info", "Gateway version and Python version", ["version", "python"],
    registry=REGISTRY, multiprocess_mode="max")
BUILD_INFO.labels(__version__, platform.python_version()).set(1)
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)  # both series exist from the start, at 0


def method_label(method: str) -> str:
    return method if method in STANDARD_METHODS else "OTHER"


class _WorkerFiles:
    """The sum over the workers' metric files (`--workers N`), as prometheus-client's
    MultiProcessCollector reads them, less the files a starting worker has created but not
    sized yet: reading one raised struct.error, and the scrape answered 500."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            try:
                if os.path.getsize(name) > 0:
                    files.append(name)
            except OSError:
                pass  # removed meanwhile (the live gauges of a worker that died)
        return MultiProcessCollector.merge(files, accumulate=True)


def exposition(accept: str) -> tuple[bytes, str]:
    """(body, content type) for a scrape: OpenMetrics when asked for, else Prometheus text."""
    registry = REGISTRY
    if MULTIPROCESS:
        registry = CollectorRegistry()
        registry.register(_WorkerFiles(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    if "application/openmetrics-text" in accept:
        return openmetrics_latest(registry), OPENMETRICS_TYPE
    return generate_latest(registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Label children resolved once per label set: `labels()` on every request is costly."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str, str], object] = {}
        self._durations: dict[tuple[str, str], object] = {}

    def observe(self, route: str, method: str, code: int, source: str,
                seconds: float | None) -> None:
        """Count a request; `seconds` None (a WebSocket session) is counted but not timed."""
        key = (route, method, str(code), source)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = HTTP_REQUESTS.labels(*key)
        counter.inc()  # type: ignore[attr-defined]
        if seconds is None:
            return
        histogram = self._durations.get((route, method))
        if histogram is None:
            histogram = self._durations[route, method] = HTTP_DURATION.labels(route, method)
        histogram.observe(seconds)  # type: ignore[attr-defined]


_upstream_errors: dict[tuple[str, str], object] = {}
_upstream_durations: dict[str, object] = {}


def upstream_error(upstream: str, kind: str) -> None:
    child = _upstream_errors.get((upstream, kind))
    if child is None:
        child = _upstream_errors[upstream, kind] = UPSTREAM_ERRORS.labels(upstream, kind)
    child.inc()  # type: ignore[attr-defined]


def upstream_duration(upstream: str, seconds: float) -> None:
    child = _upstream_durations.get(upstream)
    if child is None:
        child = _upstream_durations[upstream] = UPSTREAM_DURATION.labels(upstream)
    child.observe(seconds)  # type: ignore[attr-defined]


RATELIMIT_REPLICAS = Gauge(
    "gateway_ratelimit_replicas",
    "Gateway processes sharing the Redis rate-limit counters, as this one last counted them "
    "(their heartbeats in Redis); the in-process fallback divides limits by it",
    registry=REGISTRY, multiprocess_mode="livemax")
