"""Which address is the client: the trusted-proxy rule for X-Forwarded-For.

The TCP peer is the client unless it is a trusted proxy. From a trusted peer, X-Forwarded-For
is walked right to left (the nearest hop first), skipping hops that are themselves trusted; the
first untrusted hop is the client. If every hop is trusted the leftmost one is the client. A hop
that is not an IP address stops the walk: the last address known to be genuine (the trusted hop
to its right) is used, so a forged garbage entry cannot become a rate-limit key.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from gateway.settings.policy import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)  # the same peers and hops come again and again
def parse_ip(text: str) -> IPAddress | None:
    """An IP from a peer address or an X-Forwarded-For hop (`[v6]:port` and `v4:port` too)."""
    text = text.strip()
    if "%" in text:  # an IPv6 zone (fe80::1%eth0) names a link of the sender's, not a client
        return None
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The networks whose forwarding headers are believed."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self._networks)


def forwarded_hops(values: Sequence[str]) -> list[str]:
    """X-Forwarded-For entries in order, from all header lines."""
    return [hop.strip() for value in values for hop in value.split(",") if hop.strip()]


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: TrustedProxies) -> str:
    """The client's address as text (IPv4-mapped IPv6 shown as IPv4)."""
    peer_ip = parse_ip(peer)
    if peer_ip is None:  # unix socket or unknown transport
        return peer
    if not trusted or not forwarded_for or not trusted.trusts(peer_ip):
        return str(peer_ip)
    nearest = peer_ip
    for hop in reversed(forwarded_hops(forwarded_for)):
        ip = parse_ip(hop)
        if ip is None:
            return str(nearest)
        if not trusted.trusts(ip):
            return str(ip)
        nearest = ip
    return str(nearest)
