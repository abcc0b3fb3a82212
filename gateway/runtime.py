"""What a request runs with: the compiled policy (gateway/compiled.py) and the live resources
its decisions need, which a reload keeps or replaces.

A request takes the current Runtime once, when it starts, so a reload (which replaces the
reference) can never give it part of the old policy and part of the new. `Runtime.build`
is the one place that decides what survives a reload:

- the upstream pool, while `upstream` is unchanged (connections stay warm);
- the rate limiter and its Redis connection, while `redis` is unchanged; in-process counters
  are always carried over (a reload does not reset anyone's quota);
- per-route limit state (metric children, storage keys per client) is rebuilt: its policies
  may have changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.compiled import CompiledPolicy, RouteLimits
from gateway.config import Loaded, Policy
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
    pool: UpstreamPool
    limiter: Limiter
    limit_state: dict[str, LimitState]  # by the same names as compiled.route_limits

    @property
    def policy(self) -> Policy:
        return self.compiled.policy

    @classmethod
    def build(cls, loaded: Loaded, previous: Runtime | None = None) -> Runtime:
        """Compile `loaded` and attach the live resources, keeping `previous`'s where their
        settings did not change."""
        compiled = CompiledPolicy.build(loaded)
        policy = compiled.policy
        if previous is not None and previous.policy.upstream == policy.upstream:
            pool = previous.pool
        else:
            pool = UpstreamPool(policy.upstream)
        if previous is not None and previous.policy.redis == policy.redis:
            limiter = previous.limiter
        else:
            limiter = Limiter(policy.redis, previous.limiter.memory if previous else None)
        state = {name: _limit_state(name, limits)
                 for name, limits in compiled.route_limits.items()}
        return cls(compiled, pool, limiter, state)


def _limit_state(route: str, limits: RouteLimits) -> LimitState:
    counters = {(p.name, decision): RATELIMIT_DECISIONS.labels(route, p.name, decision)
                for p in limits.policies for decision in ("allowed", "limited", "shadow_limited")}
    return LimitState(counters, None if limits.keyed_by_header else {})
