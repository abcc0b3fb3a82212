"""`csp_reports`: the CSP report collector's settings (gateway/csp_reports.py receives them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CspReports:
    path: str
    max_size: int = 16 * 1024
    rate_limits: tuple[str, ...] = ()
