"""`observability.sentry`: where errors are reported (gateway/observability/sentry.py reports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SentrySettings:
    dsn: str = ""
    traces_sample_rate: float | None = None
    profiles_sample_rate: float | None = None
