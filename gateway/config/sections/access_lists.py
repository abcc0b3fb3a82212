"""Reads `access_lists`: named allow/deny CIDR lists that routes refer to by `access`."""

from __future__ import annotations

import ipaddress

import yaml

from gateway.config.reader import Reader, named_entries
from gateway.settings.access import AccessList, Network

KEYS = {
    "access_lists.*": ("allow", "deny"),
}


def _networks(r: Reader, node: yaml.Node, what: str) -> tuple[Network, ...] | None:
    items = r.string_list(node, what)
    if items is None:
        return None
    nets: list[Network] = []
    ok = True
    for item, text in items:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            r.error(item, f"{what}: {text!r} is not a CIDR ({exc})")
            ok = False
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                and net.network_address.ipv4_mapped is not None:
            # clients in ::ffff:0:0/96 are judged as IPv4 (client_ip.py): say it as IPv4
            r.error(item, f"{what}: {text!r} is an IPv4-mapped range; write it as IPv4 "
                    "(mapped client addresses are judged as IPv4)")
            ok = False
            continue
        nets.append(net)
    return tuple(nets) if ok else None


def read_access_lists(r: Reader, node: yaml.Node) -> dict[str, AccessList]:
    lists = {}
    for name, value in named_entries(r, node, "access_lists").items():
        where = f"access_lists.{name}"
        m = r.mapping(value, KEYS["access_lists.*"], where)
        if m is None:
            continue
        allow = _networks(r, m["allow"], f"{where}.allow") if "allow" in m else ()
        deny = _networks(r, m["deny"], f"{where}.deny") if "deny" in m else ()
        if allow is None or deny is None:
            continue
        if not allow and not deny:
            r.error(value, f"{where} needs 'allow' or 'deny' ranges")
            continue
        lists[name] = AccessList(name=name, allow=allow, deny=deny)
    return lists
