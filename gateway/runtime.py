"""What a request runs with: the compiled policy (gateway/compiled.py) and the live resources
its decisions need, which a reload keeps or replaces.

A request takes the current Runtime once, when it starts, so a reload (which replaces the
reference) can never give it part of the old policy and part of the new. `Runtime.build`
is the one place that decides what survives a reload:

- each upstream's pool, while its settings are unchanged (connections stay warm, health
  state is kept);
- the rate limiter and its Redis connection, while `redis` is unchanged; in-process counters
  are always carried over (a reload does not reset anyone's quota);
- per-route limit state (metric children, storage keys per client) is rebuilt: its policies
  may have changed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.compiled import CompiledPolicy, RouteLimits
from gateway.config import Loaded, Policy
from gateway.jwks import refresh_jwks
from gateway.observability.metrics import RATELIMIT_DECISIONS
from gateway.proxy.pool import UpstreamPool
from gateway.ratelimit.keys import Checks
from gateway.ratelimit.limiter import Limiter


@dataclass(frozen=True, slots=True)
class LimitState:
    """A route's live rate-limit state."""

    # gateway_ratelimit_decisions_total children by (policy, decision), resolved once
    counters: dict[tuple[str, str], Any]
    # storage keys (and their encoded Redis call) by client IP, when no limit of the route is
    # keyed by a header; bounded by the handler
    keys_by_client: dict[str, Checks] | None


@dataclass(frozen=True, slots=True)
class Runtime:
    compiled: CompiledPolicy
    pools: dict[str, UpstreamPool]  # by upstream name (the top-level `upstream` is `default`)
    limiter: Limiter
    limit_state: dict[str, LimitState]  # by the same names as compiled.route_limits
    background: list[asyncio.Future[None]] = field(default_factory=list)  # the JWKS refresh

    @property
    def policy(self) -> Policy:
        return self.compiled.policy

    @property
    def pool(self) -> UpstreamPool:
        """The pool of `policy.upstream`: the default upstream."""
        return self.pools[self.policy.upstream.name]

    def start_pools(self) -> None:
        """Start what runs beside requests: active health checks (a kept pool is running
        already) and the JWKS refresh of this policy's verifier."""
        for pool in self.pools.values():
            pool.start()
        verifier = self.compiled.verifier
        if verifier is not None and verifier.url is not None and not self.background:
            self.background.append(asyncio.ensure_future(
                refresh_jwks(verifier, self.policy.jwt.jwks_refresh)))

    def stop_background(self) -> None:
        """This runtime's own background work (a reload started the next runtime's)."""
        for task in self.background:
            task.cancel()
        self.background.clear()

    async def close_pools(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    @classmethod
    def build(cls, loaded: Loaded, previous: Runtime | None = None) -> Runtime:
        """Compile `loaded` and attach the live resources, keeping `previous`'s where their
        settings did not change."""
        compiled = CompiledPolicy.build(loaded)
        policy = compiled.policy
        pools = {}
        for name, settings in (policy.upstreams or {policy.upstream.name: policy.upstream}).items():
            kept = previous.pools.get(name) if previous is not None else None
            pools[name] = kept if kept is not None and kept.settings == settings \
                else UpstreamPool(settings)
        if previous is not None and previous.policy.redis == policy.redis:
            limiter = previous.limiter
        else:
            limiter = Limiter(policy.redis, previous.limiter.memory if previous else None)
        state = {name: _limit_state(name, limits)
                 for name, limits in compiled.route_limits.items()}
        if previous is not None and compiled.verifier is not None \
                and previous.compiled.verifier is not None:
            compiled.verifier.adopt(previous.compiled.verifier)  # no gap while it fetches
        return cls(compiled, pools, limiter, state)


def _limit_state(route: str, limits: RouteLimits) -> LimitState:
    counters = {(p.name, decision): RATELIMIT_DECISIONS.labels(route, p.name, decision)
                for p in limits.policies for decision in ("allowed", "limited", "shadow_limited")}
    return LimitState(counters, None if limits.keyed_by_header else {})
