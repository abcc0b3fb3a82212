"""Sentry error reporting and tracing, on only when a DSN is configured.

DSN from SENTRY_DSN or `observability.sentry.dsn`; sample rates from the policy, else
SENTRY_TRACES_SAMPLE_RATE / SENTRY_PROFILES_SAMPLE_RATE, else 0.1. Without a DSN nothing is
imported or initialised, and the request path pays one boolean check.

- Gateway exceptions are reported with the request id and route.
- Upstream failures (502/504) are reported as events grouped per upstream and kind.
- 429s are never reported as errors (they are the gateway working).
- Transactions: one per public request, named after the route; none for the admin endpoints
  (the SDK's automatic integrations are off) and none for routes named `health`.
- Trace headers (`sentry-trace`, `baggage`) go only to the configured upstream hosts.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from gateway import __version__
from gateway.observability.access_log import RequestRecord
from gateway.settings.sentry import SentrySettings

SKIP_TRANSACTIONS = frozenset({"health"})


class Reporter:
    """The gateway's view of Sentry; a no-op when disabled."""

    enabled = False

    def transaction(self, record: RequestRecord) -> AbstractContextManager[Any]:
        return nullcontext()

    def finish(self, transaction: Any, record: RequestRecord) -> None:
        pass

    def exception(self, exc: BaseException, request_id: str | None, route: str) -> None:
        pass

    def upstream_failure(self, upstream: str, kind: str, status: int, request_id: str | None,
                         route: str) -> None:
        pass

    def trace_headers(self) -> dict[str, str]:
        return {}


class SentryReporter(Reporter):
    enabled = True

    def __init__(self, settings: SentrySettings, environment: str,
                 upstream_hosts: list[str]) -> None:
        import sentry_sdk

        self._sdk = sentry_sdk
        traces = _rate(settings.traces_sample_rate, "SENTRY_TRACES_SAMPLE_RATE")
        profiles = _rate(settings.profiles_sample_rate, "SENTRY_PROFILES_SAMPLE_RATE")
        sentry_sdk.init(
            dsn=settings.dsn,
            environment=environment,
            release=f"gateway@{__version__}",
            traces_sample_rate=traces,
            profiles_sample_rate=profiles,
            # public requests are traced here; the SDK's automatic integrations (aiohttp,
            # redis-py, ...) would only import and patch libraries the gateway does not serve with
            auto_enabling_integrations=False,
            trace_propagation_targets=upstream_hosts,
            before_send=_drop_rate_limited,
        )

    def transaction(self, record: RequestRecord) -> AbstractContextManager[Any]:
        return self._sdk.start_transaction(op="http.server", name=record.method,
                                           source="route")

    def finish(self, transaction: Any, record: RequestRecord) -> None:
        """Name the transaction once the route is known; health routes are not sent."""
        transaction.name = f"{record.method} {record.route}"
        transaction.set_tag("route", record.route)
        if record.route in SKIP_TRANSACTIONS:
            transaction.sampled = False

    def exception(self, exc: BaseException, request_id: str | None, route: str) -> None:
        with self._sdk.new_scope() as scope:
            scope.set_tag("request_id", request_id)
            scope.set_tag("route", route)
            self._sdk.capture_exception(exc)

    def upstream_failure(self, upstream: str, kind: str, status: int, request_id: str | None,
                         route: str) -> None:
        with self._sdk.new_scope() as scope:
            scope.set_tag("request_id", request_id)
            scope.set_tag("route", route)
            scope.set_tag("upstream", upstream)
            scope.set_tag("kind", kind)
            scope.set_tag("status", str(status))
            scope.fingerprint = ["upstream-failure", upstream, kind]
            self._sdk.capture_message(f"upstream {kind} failure: {upstream}", level="error")

    def trace_headers(self) -> dict[str, str]:
        out = {}
        traceparent = self._sdk.get_traceparent()
        if traceparent:
            out["sentry-trace"] = traceparent
            baggage = self._sdk.get_baggage()
            if baggage:
                out["baggage"] = baggage
        return out


def _rate(configured: float | None, variable: str) -> float:
    if configured is not None:
        return configured
    try:
        return float(os.environ.get(variable, "0.1"))
    except ValueError:
        return 0.1


def _drop_rate_limited(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    if event.get("tags", {}).get("status") == "429":
        return None
    return event


def reporter(settings: SentrySettings, environment: str, upstream_hosts: list[str]) -> Reporter:
    dsn = settings.dsn or os.environ.get("SENTRY_DSN", "")
    if not dsn:
        return Reporter()
    return SentryReporter(SentrySettings(dsn, settings.traces_sample_rate,
                                         settings.profiles_sample_rate),
                          environment, upstream_hosts)
