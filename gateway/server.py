"""Lifecycle of a gateway process, in the order it happens.

    start: load policy -> bind public + admin listeners -> serve
    SIGHUP, or a policy file changed on disk: load the policy again; swap it in whole if
            valid, keep the running one if not (reload.py)
    SIGTERM/SIGINT: readiness fails at once -> listeners close -> WebSockets get 1001 ->
                    in-flight requests finish (up to timeouts.shutdown) -> exit 0

This is one serving process: `gateway run` alone, or one of the `--workers N` processes that
share the port through SO_REUSEPORT (`reuse_port`). Starting those N, forwarding SIGTERM/SIGHUP
to them and restarting any that die is the supervisor's (supervisor.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

from multidict import CIMultiDict

from gateway.admin import Admin
from gateway.config import Loaded, Policy
from gateway.config.render import redact
from gateway.descriptors import descriptors_needed, raise_open_file_limit, reserve_descriptor_table
from gateway.handler import Handler
from gateway.http.protocol import GatewayServer
from gateway.http.redirect import RedirectToHttps
from gateway.http.tls import ListenerTls
from gateway.observability import access_log
from gateway.observability.metrics import LOOP_LAG, OVERLOAD_REFUSALS
from gateway.observability.sentry import reporter
from gateway.reload import PolicyReloader
from gateway.runtime import Runtime

log = logging.getLogger("gateway.server")


class ListenError(OSError):
    """A listener could not be opened (its address is in use, or not this host's)."""


class GatewayProcess:
    """One serving process: public listener, admin listener, the current policy."""

    def __init__(self, config_path: str, loaded: Loaded, reuse_port: bool) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self.reuse_port = reuse_port
        self.tls: ListenerTls | None = None  # TLS on the public listener (server.tls)

    async def run(self) -> None:
        policy = self.loaded.policy
        sentry = reporter(policy.observability.sentry, policy.environment,
                          [t.host for t in policy.upstream.targets])
        self.handler = Handler(Runtime.build(self.loaded), sentry)  # pool needs the loop
        self.handler.runtime.limiter.start()  # replica heartbeat, Redis probes (limiter.py)
        self.handler.runtime.start_pools()  # active health checks
        access_log.configure(policy.observability.access_log.format)
        self._stopping = asyncio.Event()
        reloader = PolicyReloader(self.config_path, self.loaded, self._apply)
        server_cfg = policy.server
        limits = server_cfg.limits
        loop = asyncio.get_running_loop()
        server = GatewayServer(
            self.handler,
            header_timeout=server_cfg.timeouts.header,
            error_headers=self.handler.error_headers,
            count_error=self.handler.protocol_error,
            max_body=lambda: self.handler.runtime.policy.server.limits.max_body_size,
            max_connections=lambda: self.handler.runtime.policy.server.limits.max_connections,
            count_overload=lambda reason: OVERLOAD_REFUSALS.labels(reason).inc(),
            requests_full=self.handler.requests_full,
            pace_arrivals=True,  # a crowd of new connections, a few per turn (http/arrivals.py)
            idle_timeout=server_cfg.timeouts.idle,
            max_line_size=limits.max_header_size,
            max_field_size=limits.max_header_size,
            max_headers=limits.max_headers,
            loop=loop,
        )
        admin = GatewayServer(
            Admin(lambda: self.handler, lambda: reloader.last),
            header_timeout=server_cfg.timeouts.header, idle_timeout=server_cfg.timeouts.idle,
            error_headers=CIMultiDict, count_error=lambda status: None, max_body=lambda: 0,
            loop=loop)
        listen, admin_listen = server_cfg.listen, server_cfg.admin_listen
        public = None
        self.tls = ListenerTls(server_cfg.tls) if server_cfg.tls is not None else None
        redirect = None
        try:
            public = await loop.create_server(
                server, listen.host, listen.port, reuse_port=self.reuse_port, backlog=1024,
                ssl=self.tls.front if self.tls is not None else None,
                ssl_handshake_timeout=server_cfg.timeouts.header if self.tls else None)
            if server_cfg.redirect_http is not None:
                plain = server_cfg.redirect_http
                redirect = await loop.create_server(
                    lambda: RedirectToHttps(listen.port, server_cfg.timeouts.header),
                    plain.host, plain.port, reuse_port=self.reuse_port)
            admin_listener = await loop.create_server(
                admin, admin_listen.host, admin_listen.port, reuse_port=self.reuse_port)
        except OSError as exc:
            # one clear line from the caller; nothing left open behind it
            if public is not None:
                public.close()
            if redirect is not None:
                redirect.close()
            await self.handler.runtime.close_pools()
            await self.handler.runtime.limiter.close()
            raise ListenError(f"{exc.strerror or exc} (public {listen}, admin "
                              f"{admin_listen})") from None
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
        # held since start-up (cli, and inherited from the supervisor): one that came
        # meanwhile is delivered now and reloads
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        watcher = None
        if server_cfg.watch:
            watcher = asyncio.create_task(reloader.watch(server_cfg.watch_interval))
        lag = asyncio.create_task(measure_loop_lag())
        targets = ", ".join(t.base_url for t in policy.upstream.targets)
        log.info("gateway pid %d listening on %s (admin %s), upstream %s, %d routes",
                 os.getpid(), listen, admin_listen, targets, len(policy.routes))
        log.info("rate limits: %s", describe_limiter(policy))
        # What start-up made (modules, the compiled policy: ~30,000 objects) lives as long as
        # the process: moved out of the garbage collector's generations, so that a full
        # collection, which stops the loop while it walks every tracked object, walks only
        # what serving made (~10 ms less per full collection on a 2-core machine). A reload
        # puts them back (`_apply`): the policy it replaces can then be collected.
        gc.freeze()
        # A full collection is due after 100 collections of the middle generation, not 10:
        # a crowd of connections opening (2,000 within a second) makes objects that live as
        # long as they do, and at the default every 25 % of growth paid a full collection (44
        # to 160 ms each with 2,000 trickled bodies held), stalling everyone's requests. What
        # a connection leaves is freed by reference counting (http/protocol.py), so waiting
        # longer leaves little garbage behind.
        gc.set_threshold(700, 10, 100)

        await self._stopping.wait()

        if watcher is not None:
            watcher.cancel()
        lag.cancel()
        log.info("draining: readiness now fails, finishing in-flight requests")
        self.handler.draining = True
        public.close()  # no new connections; those open finish what they are answering
        if redirect is not None:
            redirect.close()
        await self.handler.websockets.close_all(message=b"gateway shutting down")
        await server.shutdown(server_cfg.timeouts.shutdown)
        access_log.flush()  # the lines of the last requests (buffered: access_log.py)
        self.handler.runtime.stop_background()
        await self.handler.runtime.close_pools()
        await self.handler.runtime.limiter.close()
        admin_listener.close()
        await admin.shutdown(1.0)
        log.info("stopped")

    def _apply(self, loaded: Loaded) -> None:
        """Swap in a validated policy: one reference assignment, seen by the next request."""
        old = self.handler.runtime
        self.handler.runtime = new = Runtime.build(loaded, previous=old)
        gc.unfreeze()  # (see run: the start-up policy, frozen, could otherwise never be freed)
        # more connections allowed: the table grows now, not while they open (descriptors.py)
        reserve_descriptor_table(descriptors_needed(loaded.policy))
        access_log.configure(loaded.policy.observability.access_log.format)
        new_tls = new.policy.server.tls
        if self.tls is not None and new_tls is not None:
            self.tls.update(new_tls)  # new handshakes only: open connections keep theirs
        elif (self.tls is None) != (new_tls is None):
            log.warning("server.tls switched on or off in the policy; it applies after a "
                        "restart")
        if new.policy.server.listen != old.policy.server.listen or \
                new.policy.server.admin_listen != old.policy.server.admin_listen or \
                new.policy.server.redirect_http != old.policy.server.redirect_http:
            log.warning("listener addresses changed in the policy; they apply after a restart")
        # requests still using the old pool or Redis connection keep them until they finish
        later = asyncio.get_running_loop().call_later
        grace = old.policy.server.timeouts.shutdown
        new.start_pools()
        old.stop_background()
        for pool in old.pools.values():
            if pool not in new.pools.values():
                later(grace, lambda pool=pool: asyncio.ensure_future(pool.close()))
        if new.limiter is not old.limiter:
            new.limiter.start()  # its heartbeat and probes, before its first request
            log.info("rate limits: %s", describe_limiter(new.policy))
            later(grace, lambda: asyncio.ensure_future(old.limiter.close()))


async def measure_loop_lag(interval: float = 0.25) -> None:
    """How late the loop runs a timer: the time one turn of queued work holds everything up
    (exported as gateway_event_loop_lag_seconds)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        LOOP_LAG.set(max(0.0, loop.time() - asked - interval))


def describe_limiter(policy: Policy) -> str:
    if not policy.rate_limits:
        return "none configured"
    if not policy.redis.url:
        return ("in-process counters (no redis.url): correct for ONE gateway instance only; "
                "replicas would each allow the full limit")
    where = redact(policy.redis.url)
    return f"shared through Redis at {where} (failure_mode {policy.redis.failure_mode})"


def _event_loop_runner():  # pragma: no cover - trivial
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def serve(config_path: str, loaded: Loaded, reuse_port: bool = False) -> int:
    raise_open_file_limit()
    reserve_descriptor_table(descriptors_needed(loaded.policy))
    _event_loop_runner()(GatewayProcess(config_path, loaded, reuse_port).run())
    return 0
