"""`rate_limits` and `redis`: what each limit counts and where the counters live."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

ALGORITHMS = ("sliding_window", "fixed_window", "token_bucket")
MODES = ("enforce", "shadow")
FAILURE_MODES = ("open", "closed")
FALLBACKS = ("divide", "full")  # redis.fallback: the in-process limit while Redis is away


@dataclass(frozen=True, slots=True)
class KeyPart:
    kind: str  # client_ip | header | jwt | global
    header: str | None = None  # lower-case field name, for kind == "header"
    claim: str | None = None  # the bearer JWT's claim, for kind == "jwt"


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    name: str
    limit: int
    period_ms: int
    key: tuple[KeyPart, ...] = (KeyPart("client_ip"),)
    algorithm: str = "sliding_window"
    burst: int | None = None  # token_bucket capacity; defaults to `limit`
    mode: str = "enforce"
    # an IPv6 client is counted by its /64 (one subscriber's network, which a client can
    # rotate addresses within at will); IPv4 and IPv4-mapped addresses as they are
    ipv6_prefix: int = 64
    # clients in these networks are not counted by this limit (a load balancer's health
    # checker, an internal monitor); other limits of the route still apply to them
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # derived once here, read on every request
    enforced: bool = field(init=False, repr=False, compare=False)
    capacity: int = field(init=False, repr=False, compare=False)  # burst, or limit

    def __post_init__(self) -> None:
        object.__setattr__(self, "enforced", self.mode == "enforce")
        object.__setattr__(self, "capacity",
                           self.burst if self.burst is not None else self.limit)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = ""  # empty: in-process counters, one instance only
    timeout: float = 0.1
    failure_mode: str = "open"
    key_prefix: str = "gw:"
    # failure_mode open, Redis away: each replica enforces ceil(limit / replicas) (`divide`,
    # replicas as last counted by their heartbeats in Redis), or the whole limit (`full`)
    fallback: str = "divide"
