"""The access log: one line per request, JSON by default, to stdout.

Fields: time, request_id, client_ip, method, path (normalized), route, status, source
(gateway | upstream), bytes_in, bytes_out, duration_ms, upstream_ms, limited_by. Requests of
routes listed in `observability.access_log.exclude_routes` (default: `health`) are not logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("gateway.access")


@dataclass(slots=True)
class RequestRecord:
    """What the handler learns about a request, for the access log and the metrics."""

    method: str
    route: str = "unmatched"
    source: str = "gateway"
    path: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    limited_by: tuple[str, ...] = ()
    upstream_seconds: float | None = None
    body_bytes_out: int = 0  # body bytes relayed from the upstream


def configure(fmt: str) -> None:
    """Send access lines to stdout, unformatted (the line is already the record)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    configure.format = fmt  # type: ignore[attr-defined]


configure.format = "json"  # type: ignore[attr-defined]


def write(record: RequestRecord, status: int, bytes_in: int, bytes_out: int,
          seconds: float) -> None:
    fields = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "request_id": record.request_id, "client_ip": record.client_ip,
        "method": record.method, "path": record.path, "route": record.route,
        "status": status, "source": record.source, "bytes_in": bytes_in,
        "bytes_out": bytes_out, "duration_ms": round(seconds * 1000, 2),
        "upstream_ms": None if record.upstream_seconds is None
        else round(record.upstream_seconds * 1000, 2),
        "limited_by": list(record.limited_by) or None,
    }
    if configure.format == "json":  # type: ignore[attr-defined]
        log.info(json.dumps(fields, separators=(",", ":")))
    else:
        log.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None))
