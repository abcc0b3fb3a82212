"""Header rewriting between client and upstream: hop-by-hop removal, X-Forwarded-*, Via.

Pure functions from header multidicts to header multidicts; the forwarder calls them once per
request. The trusted-proxy decision is made by the caller (see client_ip.py) and passed in.

Two rules keep the upstream seeing the request the gateway judged:
- a name listed in `Connection` is removed as hop-by-hop, except the fields the gateway itself
  decided on (Host, Content-Length, Origin and the headers rate limits are keyed by):
  `Connection: Host` must not make the upstream see another host than the one routed on;
- client-identity headers (True-Client-IP, CF-Connecting-IP, ...; `server.
  client_identity_headers`) are removed from every request, from trusted peers too: the
  gateway states who the client is only in X-Forwarded-For and X-Real-IP.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 7.6.1 plus the proxy credentials, which belong to this hop only.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})
# Client-supplied forwarding facts, believed only from a trusted proxy.
_FORWARDING = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
               "X-Real-IP", "Forwarded", "X-Request-ID")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
VIA_PSEUDONYM = "gateway"
# fields a `Connection` header can never strip: what routing, body checks and CORS decided on
_DECIDED_ON = frozenset({"host", "content-length", "origin"})
# Headers through which frameworks let a request say it is another path or method (IIS and
# Symfony read X-Original-URL; many read X-HTTP-Method-Override): the gateway judged the real
# path and method, so the upstream must not execute another one.
OVERRIDES = frozenset({"x-original-url", "x-rewrite-url", "x-override-url",
                       "x-http-method-override", "x-http-method", "x-method-override"})


def _with_underscores(names: Iterable[str]) -> frozenset[str]:
    """`x_forwarded_for` for `x-forwarded-for`: WSGI and CGI servers read a header written with
    underscores as the dashed one (nginx drops such names for the same reason)."""
    return frozenset(n.replace("-", "_") for n in names if "-" in n)


@dataclass(frozen=True, slots=True)
class ForwardingRules:
    """Which request headers never reach the upstream, compiled once per policy."""

    remove: frozenset[str]  # lower-case: hop-by-hop and client-identity claims
    keep: frozenset[str]  # lower-case: never removed because `Connection` lists them

    @classmethod
    def build(cls, identity_headers: Iterable[str],
              key_headers: Iterable[str] = ()) -> ForwardingRules:
        removed = HOP_BY_HOP | OVERRIDES | {h.lower() for h in identity_headers}
        spoofable = removed | {h.lower() for h in _FORWARDING} | {"via"}
        return cls(removed | _with_underscores(spoofable),
                   _DECIDED_ON | {h.lower() for h in key_headers})


DEFAULT_RULES = ForwardingRules.build(())


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Lower-case names the `Connection` header declares hop-by-hop."""
    names: set[str] = set()
    for value in headers.getall("Connection", ()):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def _end_to_end(headers: CIMultiDictProxy[str],
                rules: ForwardingRules = DEFAULT_RULES) -> CIMultiDict[str]:
    drop = rules.remove
    if "Connection" in headers:
        drop = drop | (connection_listed(headers) - rules.keep)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def choose_request_id(headers: CIMultiDictProxy[str], peer_trusted: bool) -> str:
    """The incoming X-Request-ID when a trusted proxy sent a well-formed one, else a new one."""
    if peer_trusted:
        incoming = headers.get("X-Request-ID")
        if incoming is not None and _REQUEST_ID.fullmatch(incoming):
            return incoming
    return new_request_id()


_random_bits = random.SystemRandom().getrandbits  # seeds only; see new_request_id
_ids = random.Random(_random_bits(256))


def new_request_id() -> str:
    """A random UUID (version 4 form). Drawn from a generator seeded once from the OS, not
    from os.urandom per request (uuid.uuid4 reads it each time, a syscall per request): a
    request ID names a request, it guards nothing. Reseeded in a forked child."""
    bits = _ids.getrandbits(128) & _CLEAR | _VERSION_4
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# the version (4) and variant (RFC 9562) bits of a UUID, as uuid.UUID(version=4) sets them
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def _reseed() -> None:
    _ids.seed(_random_bits(256))


os.register_at_fork(after_in_child=_reseed)


def via(version: tuple[int, int]) -> str:
    """The gateway's own Via entry for a message of HTTP `version`."""
    return f"{version[0]}.{version[1]} {VIA_PSEUDONYM}"


def _via(headers: CIMultiDictProxy[str], version: tuple[int, int]) -> str:
    mine = via(version)
    existing = ", ".join(headers.getall("Via", ()))
    return f"{existing}, {mine}" if existing else mine


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    version: tuple[int, int],
    peer: str,
    peer_trusted: bool,
    client_ip: str,
    scheme: str,
    request_id: str,
    upstream_authority: str | None,
    rules: ForwardingRules = DEFAULT_RULES,
) -> CIMultiDict[str]:
    """Headers to send upstream. `upstream_authority` None keeps the client's Host."""
    out = _end_to_end(incoming, rules)
    # The gateway answers Expect itself, after its policy checks.
    out.popall("Expect", None)
    original_host = incoming.get("Host", "")
    prior_for = ", ".join(incoming.getall("X-Forwarded-For", ()))
    prior_proto = incoming.get("X-Forwarded-Proto", "").lower()
    prior_host = incoming.get("X-Forwarded-Host")
    for name in _FORWARDING:
        out.popall(name, None)
    if peer_trusted:
        out["X-Forwarded-For"] = f"{prior_for}, {peer}" if prior_for else peer
        out["X-Forwarded-Proto"] = prior_proto if prior_proto in ("http", "https") else scheme
        out["X-Forwarded-Host"] = prior_host or original_host
        for name in ("Forwarded",):
            for value in incoming.getall(name, ()):
                out.add(name, value)
    else:
        out["X-Forwarded-For"] = peer
        out["X-Forwarded-Proto"] = scheme
        out["X-Forwarded-Host"] = original_host
    out["X-Real-IP"] = client_ip
    out["X-Request-ID"] = request_id
    out["Via"] = _via(incoming, version)
    if upstream_authority is not None:
        out["Host"] = upstream_authority
    return out


def downstream_response_headers(
    upstream: CIMultiDictProxy[str] | CIMultiDict[str] | Sequence[tuple[str, str]], *,
    version: tuple[int, int], request_id: str,
) -> CIMultiDict[str]:
    """Headers to return to the client from an upstream response: its fields (name, value)
    in the order sent, or a multidict of them."""
    fields: Sequence[tuple[str, str]] = (
        list(upstream.items()) if isinstance(upstream, CIMultiDict | CIMultiDictProxy)
        else upstream)
    # lower-cased once, however many rules look at the names
    named = [(name.lower(), name, value) for name, value in fields]
    drop = DEFAULT_RULES.remove
    vias: list[str] = []
    listed: set[str] = set()
    for lowered, _, value in named:
        if lowered == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
        elif lowered == "via":
            vias.append(value)
    if listed:
        listed.discard("")
        drop = drop | (listed - DEFAULT_RULES.keep)
    out = CIMultiDict([(name, value) for lowered, name, value in named if lowered not in drop])
    mine = via(version)
    out["Via"] = f"{', '.join(vias)}, {mine}" if vias else mine
    out["X-Request-ID"] = request_id
    return out
