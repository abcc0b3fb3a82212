"""Prometheus metrics, with the names and labels fixed in DESIGN.md ("Metrics")."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total", "Policy reloads by result (success | failure)",
    ["result"], registry=REGISTRY)
BUILD_INFO = Gauge(
    "gateway_build_info", "Gateway version and Python version", ["version", "python"],
    registry=REGISTRY)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)  # both series exist from the start, at 0
