"""The CSP report collector: an optional endpoint on the public port where browsers send
Content-Security-Policy violation reports (`report-uri`, or the Reporting API's `report-to`).

It accepts only POSTed JSON of a bounded size, applies its own rate limits, logs one line per
report (the fields an operator acts on, truncated) and counts them; it never forwards them.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("gateway.csp")
CONTENT_TYPES = ("application/csp-report", "application/reports+json", "application/json")
_FIELDS = ("document-uri", "documentURL", "blocked-uri", "blockedURL", "violated-directive",
           "effectiveDirective", "effective-directive", "source-file", "sourceFile",
           "line-number", "lineNumber")


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
