"""Prometheus metrics, with the names and labels fixed in DESIGN.md ("Metrics")."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

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
BUILD_INFO = Gauge(
    "gateway_build_info", "Gateway version and Python version", ["version", "python"],
    registry=REGISTRY)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)  # both series exist from the start, at 0
