"""Upstream target health: passive (connect failures seen by requests) and active (a GET of
the policy's health path at an interval), deciding which targets the balancer may choose.

- Passive, as nginx's `max_fails`/`fail_timeout`: a target whose connects failed
  `eject_after` times in a row is left out for `eject_for` seconds; a request that meets the
  failure is retried on another target as before (idempotent methods).
- Active, as Envoy's health checker: each target is asked `GET <path>` every `interval`; after
  `unhealthy` failures in a row (no connection, no answer within `timeout`, a status that is
  not 2xx or 3xx) it is down, after `healthy` successes in a row it is up again. Targets start
  up, so that a fresh gateway serves at once.
- When every target is left out, all of them are tried (Envoy's "panic" mode): refusing
  everything would turn a health-check mistake into an outage.

`gateway_upstream_target_up{upstream, target}` says what the balancer sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.observability.metrics import TARGET_UP
from gateway.settings.policy import HealthCheck, UpstreamSettings, UpstreamTarget

log = logging.getLogger("gateway.health")


class TargetHealth:
    __slots__ = ("_eject_after", "_eject_for", "_gauge", "down", "ejected_until", "failures",
                 "name", "streak")

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self._eject_after = settings.eject_after
        self._eject_for = settings.eject_for
        self.failures = 0  # connect failures in a row (passive)
        self.ejected_until = 0.0  # monotonic time
        self.down = False  # per the active checks
        self.streak = 0  # active results in a row against the current state
        self._gauge = TARGET_UP.labels(settings.name, name)
        self._gauge.set(1)

    def available(self, now: float) -> bool:
        return not self.down and now >= self.ejected_until

    def connect_failed(self) -> None:
        self.failures += 1
        if self._eject_after and self.failures >= self._eject_after:
            self.failures = 0
            self.ejected_until = time.monotonic() + self._eject_for
            log.warning("upstream target %s ejected for %gs after %d connect failures in a row",
                        self.name, self._eject_for, self._eject_after)
            self._publish()

    def connected(self) -> None:
        self.failures = 0

    def checked(self, ok: bool, check: HealthCheck) -> None:
        """One active check's result."""
        if ok == (not self.down):  # agrees with the current state
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= (check.healthy if self.down else check.unhealthy):
            self.down, self.streak = not self.down, 0
            if not self.down:
                self.ejected_until = 0.0  # passing active checks readmits at once
            log.warning("upstream target %s is %s (active health checks)", self.name,
                        "down" if self.down else "up again")
            self._publish()

    def _publish(self) -> None:
        self._gauge.set(0 if self.down or time.monotonic() < self.ejected_until else 1)


async def probe(target: UpstreamTarget, check: HealthCheck, ssl_context: object) -> bool:
    """One `GET <path>`: True on a 2xx or 3xx status line within the timeout."""
    writer = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=ssl_context,
                server_hostname=target.host if ssl_context is not None else None)
            writer.write(f"GET {check.path} HTTP/1.1\r\nHost: {target.authority}\r\n"
                         "User-Agent: gateway-health-check\r\nConnection: close\r\n\r\n"
                         .encode())
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = line.split(b" ", 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")


async def run_checks(target: UpstreamTarget, health: TargetHealth, check: HealthCheck,
                     ssl_context: object) -> None:
    """Check `target` every `check.interval` until cancelled."""
    while True:
        health.checked(await probe(target, check, ssl_context), check)
        await asyncio.sleep(check.interval)
