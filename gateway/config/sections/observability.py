"""Reads the `observability` section (access log, Sentry)."""

from __future__ import annotations

import re

import yaml

from gateway.config.reader import Reader, checked_names
from gateway.settings.policy import (
    AccessLog,
    Observability,
)
from gateway.settings.sentry import SentrySettings

_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")

KEYS = {
    "observability": ("access_log", "sentry"),
    "observability.sentry": ("dsn", "traces_sample_rate", "profiles_sample_rate"),
    "observability.access_log": ("enabled", "format", "exclude_routes"),
}


def _sentry(r: Reader, node: yaml.Node) -> SentrySettings | None:
    m = r.mapping(node, KEYS["observability.sentry"], "observability.sentry")
    if m is None:
        return None
    dsn = ""
    if "dsn" in m and not (isinstance(m["dsn"], yaml.ScalarNode)
                           and m["dsn"].tag == "tag:yaml.org,2002:null"):
        dsn = r.string(m["dsn"], "observability.sentry.dsn")
        if dsn and not dsn.startswith(("https://", "http://")):
            r.error(m["dsn"], "observability.sentry.dsn must be an http(s) URL")
            dsn = None
    rates = {}
    for key in ("traces_sample_rate", "profiles_sample_rate"):
        rates[key] = r.number(m[key], f"observability.sentry.{key}", 0, 1) if key in m else -1.0
    if dsn is None or None in rates.values():
        return None
    return SentrySettings(dsn, *(None if v == -1.0 else v for v in rates.values()))


def read_observability(r: Reader, node: yaml.Node) -> Observability | None:
    m = r.mapping(node, KEYS["observability"], "observability")
    if m is None:
        return None
    sentry = _sentry(r, m["sentry"]) if "sentry" in m else SentrySettings()
    if "access_log" not in m:
        return Observability(sentry=sentry) if sentry is not None else None
    a = r.mapping(m["access_log"], KEYS["observability.access_log"], "observability.access_log")
    if a is None or sentry is None:
        return None
    d = AccessLog()
    enabled = r.boolean(a["enabled"], "observability.access_log.enabled") \
        if "enabled" in a else d.enabled
    fmt = r.string(a["format"], "observability.access_log.format") if "format" in a \
        else d.format
    if fmt is not None and fmt not in ("json", "text"):
        r.error(a["format"], "observability.access_log.format must be json or text")
        fmt = None
    exclude = d.exclude_routes
    if "exclude_routes" in a:
        what = "observability.access_log.exclude_routes"
        names = checked_names(r, r.string_list(a["exclude_routes"], what), what, _ROUTE_NAME,
                       "a route name")
        exclude = frozenset(names) if names is not None else None
    if enabled is None or fmt is None or exclude is None:
        return None
    return Observability(AccessLog(enabled, fmt, exclude), sentry)
