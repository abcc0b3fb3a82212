"""Which counter a request counts against: the key of a rate limit, as a Redis hash tag.

A key is built from the policy's parts (client_ip, header:<Name>, global). A request without
a header its key needs is keyed by its client IP instead, never left unlimited, and the
returned note says so (shown by `gateway explain`). Values that are long or could break a
Redis hash tag are replaced by a digest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable

from multidict import CIMultiDictProxy

from gateway.identity import NOT_NEEDED, Identity, TokenOutcome, claim_text
from gateway.ratelimit.algorithms import CODES
from gateway.settings.ratelimit import RateLimitPolicy

Item = tuple[RateLimitPolicy, str]  # a policy and the storage key it counts against


class Checks:
    """A request's rate limits, each with the counter it counts against, in check order.

    The handler keeps them per client, so a returning client costs no key building; a
    backend may keep what it derives from them while they live (weakly referenced: the Redis
    backend's encoded call and Cluster slots).
    """

    __slots__ = ("__weakref__", "items", "policies")

    def __init__(self, items: Iterable[Item]) -> None:
        self.items: tuple[Item, ...] = tuple(items)
        self.policies: tuple[RateLimitPolicy, ...] = tuple(p for p, _ in self.items)


_PLAIN = re.compile(r"[A-Za-z0-9.:/_\-]{1,64}")


def _safe(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else _digest(value)


def client_network(client_ip: str, ipv6_prefix: int) -> str:
    """The client's counting identity: an IPv6 address as its network of `ipv6_prefix` bits
    (`2001:db8:1:2::/64`), anything else as it is (the client IP is already IPv4 for an
    IPv4-mapped address)."""
    if ":" not in client_ip or ipv6_prefix >= 128:
        return client_ip
    try:
        net = ipaddress.IPv6Network((client_ip, ipv6_prefix), strict=False)
    except ValueError:  # not an address (a unix socket peer): as it is
        return client_ip
    return net.with_prefixlen


# a header whose value is a credential (an API key, a session) is always keyed by its digest:
# the secret itself never lands in Redis, in `gateway explain` or in a log
_CREDENTIAL = re.compile(r"authorization|cookie|.*(key|token|secret|session|auth).*")


def _digest(value: str) -> str:
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def limit_tag(
    policy: RateLimitPolicy, client_ip: str, headers: CIMultiDictProxy[str],
    identity: Identity = NOT_NEEDED,
) -> tuple[str, str | None]:
    """(hash-tag text, note when a header or a valid token was missing and the client IP
    stood in)."""
    parts: list[str] = []
    note = None
    for part in policy.key:
        if part.kind == "global":
            parts.append("global")
        elif part.kind == "client_ip":
            parts.append(f"ip={_safe(client_network(client_ip, policy.ipv6_prefix))}")
        elif part.kind == "jwt":
            claims = identity.claims or {}
            value = claim_text(claims.get(part.claim or "sub"))
            if identity.outcome is TokenOutcome.VALID and value:
                parts.append(f"jwt.{part.claim}={_safe(value)}")
            else:
                why = identity.reason if identity.outcome is not TokenOutcome.VALID \
                    else f"no claim {part.claim}"
                note = f"bearer token: {why}: keyed by client IP"
                parts.append(f"ip={_safe(client_network(client_ip, policy.ipv6_prefix))}")
        else:
            value = headers.get(part.header or "")
            if value:
                text = _digest(value) if _CREDENTIAL.fullmatch(part.header or "") \
                    else _safe(value)
                parts.append(f"h.{part.header}={text}")
            else:
                note = f"header {part.header} missing: keyed by client IP"
                parts.append(f"ip={_safe(client_network(client_ip, policy.ipv6_prefix))}")
    # the same client IP twice (client_ip+header with the header missing) is one part
    return "|".join(dict.fromkeys(parts)), note


def storage_key(prefix: str, policy: RateLimitPolicy, tag: str) -> str:
    """`gw:{ip=1.2.3.4}:login:s900000`; the period and algorithm are part of the key so a
    changed policy starts fresh counters instead of misreading old ones."""
    return f"{prefix}{{{tag}}}:{policy.name}:{CODES[policy.algorithm]}{policy.period_ms}"
