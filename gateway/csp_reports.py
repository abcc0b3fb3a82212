"""The CSP report collector: an optional endpoint on the public port where browsers send
Content-Security-Policy violation reports (`report-uri`, or the Reporting API's `report-to`).

It accepts only POSTed JSON of a bounded size, applies its own rate limits, logs one line per
report (the fields an operator acts on, truncated) and counts them; it never forwards them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from gateway.config.reader import Reader

log = logging.getLogger("gateway.csp")
KEYS = {"csp_reports": ("path", "max_size", "rate_limits")}
CONTENT_TYPES = ("application/csp-report", "application/reports+json", "application/json")
_FIELDS = ("document-uri", "documentURL", "blocked-uri", "blockedURL", "violated-directive",
           "effectiveDirective", "effective-directive", "source-file", "sourceFile",
           "line-number", "lineNumber")


@dataclass(frozen=True, slots=True)
class CspReports:
    path: str
    max_size: int = 16 * 1024
    rate_limits: tuple[str, ...] = ()


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


def summarize(body: bytes) -> list[dict[str, str]] | None:
    """The reports in a body (report-uri or Reporting API format), or None if it is not one."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("csp-report"), dict):
        reports = [doc["csp-report"]]
    elif isinstance(doc, list):
        reports = [item.get("body") for item in doc
                   if isinstance(item, dict) and isinstance(item.get("body"), dict)]
    else:
        return None
    out = []
    for report in reports:
        out.append({k: str(report[k])[:200] for k in _FIELDS if k in report})
    return out or None
