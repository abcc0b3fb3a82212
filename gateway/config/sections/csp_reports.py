"""Reads the `csp_reports` section."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.reader import Reader
from gateway.settings.csp import CspReports

KEYS = {"csp_reports": ("path", "max_size", "rate_limits")}


def read_csp_reports(r: Reader, node: yaml.Node, limits: dict[str, Any]) -> CspReports | None:
    m = r.mapping(node, KEYS["csp_reports"], "csp_reports")
    if m is None:
        return None
    if "path" not in m:
        r.error(node, "csp_reports needs a 'path'")
        return None
    path = r.string(m["path"], "csp_reports.path")
    if path is not None and (not path.startswith("/") or "?" in path or "%" in path):
        r.error(m["path"], "csp_reports.path must be a plain path starting with '/'")
        path = None
    max_size = r.size(m["max_size"], "csp_reports.max_size") if "max_size" in m else 16 * 1024
    names: list[str] = []
    unknown = False
    for item, name in (r.string_list(m["rate_limits"], "csp_reports.rate_limits") or ()) \
            if "rate_limits" in m else ():
        if name not in limits:
            unknown = True
            if name not in getattr(limits, "declared", ()):  # a broken one is reported there
                r.error(item, f"csp_reports.rate_limits: unknown rate limit {name!r}")
            continue
        names.append(name)
    if path is None or max_size is None or unknown:
        return None
    return CspReports(path, max_size, tuple(names))
