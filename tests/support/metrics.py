"""The gateway's /metrics (admin port), scraped and parsed for the tests."""

from __future__ import annotations

import urllib.request
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families


class HasAdmin(Protocol):
    admin_url: str


def scrape(gw: HasAdmin, accept: str = "") -> tuple[str, str]:
    """The /metrics body and its Content-Type (`accept` chooses the format)."""
    req = urllib.request.Request(gw.admin_url + "/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def metrics_text(gw: HasAdmin) -> str:
    return scrape(gw)[0]


def samples(gw: HasAdmin, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` (e.g. `x_total`, `x_bucket`): sorted labels -> value."""
    out = {}
    for family in text_string_to_metric_families(metrics_text(gw)):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(gw: HasAdmin, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly these labels; None while it is not exported."""
    return samples(gw, name).get(tuple(sorted(labels.items())))


def total(gw: HasAdmin, name: str) -> float:
    """`name` summed over all its label sets (0 while none is exported)."""
    return sum(samples(gw, name).values())


def redis_errors(gw: HasAdmin) -> float:
    """Failed Redis rate-limit calls (0 while none was counted)."""
    return value(gw, "gateway_redis_errors_total", operation="ratelimit") or 0.0


def redis_successes(gw: HasAdmin) -> float:
    """Redis rate-limit calls that succeeded (only they are observed in the histogram)."""
    return value(gw, "gateway_redis_duration_seconds_count") or 0.0
