"""Access lists: which client addresses a route serves (`access_lists` in the policy)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessList:
    """Allow and deny ranges, evaluated on the client IP. Deny wins; with `allow` ranges, a
    client in none of them is refused; with only `deny` ranges, everyone else is served."""

    name: str
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
