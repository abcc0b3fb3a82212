"""A loaded policy compiled for the hot path: the one object a request reads its rules from.

A request takes the current Runtime once, when it starts, so a reload (which replaces the
reference) can never give it part of the old policy and part of the new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.config import Loaded, Policy
from gateway.http.client_ip import TrustedProxies
from gateway.proxy.pool import UpstreamPool
from gateway.routing import Router


@dataclass(frozen=True, slots=True)
class Runtime:
    loaded: Loaded
    router: Router
    trusted: TrustedProxies
    pool: UpstreamPool
    loaded_at: float  # wall-clock time of the load

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @classmethod
    def build(cls, loaded: Loaded, previous: Runtime | None = None) -> Runtime:
        """Compile `loaded`; the upstream pool is kept when the upstream settings did not change."""
        policy = loaded.policy
        if previous is not None and previous.policy.upstream == policy.upstream:
            pool = previous.pool
        else:
            pool = UpstreamPool(policy.upstream)
        return cls(loaded=loaded, router=Router(policy.routes),
                   trusted=TrustedProxies(policy.server.trusted_proxies), pool=pool,
                   loaded_at=time.time())
