"""The access decision: is this client IP served on this route (its access list)?

Pure: evaluated on the client IP the trusted-proxy walk gave (http/client_ip.py), which also
turns an IPv4-mapped IPv6 address (::ffff:203.0.113.7) into the IPv4 one, so a range written
as IPv4 covers a client that reached a dual-stack listener.
"""

from __future__ import annotations

import enum

from gateway.http.client_ip import parse_ip
from gateway.settings.access import AccessList


class AccessOutcome(enum.Enum):
    NO_LIST = "no access list"
    ALLOWED = "allowed"
    DENIED = "denied"  # in a deny range
    NOT_ALLOWED = "not in an allow range"
    UNKNOWN_ADDRESS = "no client address to judge"  # refused: an access list fails closed

    @property
    def refused(self) -> bool:
        return self in (AccessOutcome.DENIED, AccessOutcome.NOT_ALLOWED,
                        AccessOutcome.UNKNOWN_ADDRESS)


def judge(access: AccessList | None, client_ip: str) -> AccessOutcome:
    if access is None:
        return AccessOutcome.NO_LIST
    ip = parse_ip(client_ip)
    if ip is None:
        return AccessOutcome.UNKNOWN_ADDRESS
    if any(ip in net for net in access.deny):
        return AccessOutcome.DENIED
    if access.allow and not any(ip in net for net in access.allow):
        return AccessOutcome.NOT_ALLOWED
    return AccessOutcome.ALLOWED
