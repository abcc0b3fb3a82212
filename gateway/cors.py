"""CORS decisions at request time: pure functions of a `CorsPolicy` (gateway/settings/cors.py,
validated when the policy loads) and the request's headers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.settings.cors import PREFLIGHT_VARY, SAFELISTED_METHODS, CorsPolicy
from gateway.tokens import TOKEN

# -- request time ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Preflight:
    allowed: bool
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def is_preflight(method: str, headers: CIMultiDictProxy[str]) -> bool:
    return method == "OPTIONS" and "Origin" in headers and \
        "Access-Control-Request-Method" in headers


def requested_headers(headers: CIMultiDictProxy[str]) -> list[str]:
    """Access-Control-Request-Headers, over any number of lines, blanks and spaces ignored."""
    return [name.strip().lower() for value in headers.getall("Access-Control-Request-Headers", ())
            for name in value.split(",") if name.strip()]


def preflight(policy: CorsPolicy, headers: CIMultiDictProxy[str]) -> Preflight:
    origin = headers.get("Origin", "")
    if len(headers.getall("Origin")) != 1 or not policy.allows_origin(origin):
        return Preflight(False, reason=f"origin {origin!r} is not allowed")
    method = headers.get("Access-Control-Request-Method", "")
    if method not in policy.allow_methods and method not in SAFELISTED_METHODS:
        return Preflight(False, reason=f"method {method!r} is not allowed")
    asked = requested_headers(headers)
    for name in asked:
        if not TOKEN.fullmatch(name):
            return Preflight(False, reason=f"{name!r} is not a header name")
        if not policy.allow_any_header and name not in policy.allow_headers:
            return Preflight(False, reason=f"header {name!r} is not allowed")
    out = [("Access-Control-Allow-Origin", "*" if policy.allow_any_origin else origin)]
    if policy.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if policy.methods_value:
        out.append(("Access-Control-Allow-Methods", policy.methods_value))
    if asked:
        out.append(("Access-Control-Allow-Headers", policy.headers_value))
    if policy.max_age is not None:
        out.append(("Access-Control-Max-Age", str(policy.max_age)))
    out.append(("Vary", PREFLIGHT_VARY))
    return Preflight(True, tuple(out))


def actual(policy: CorsPolicy, headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """CORS headers for an actual (non-preflight) response; empty when the origin is not
    allowed (the browser then withholds the response from the page)."""
    origins = headers.getall("Origin", ())
    if len(origins) != 1 or not policy.allows_origin(origins[0]):
        return []
    out = [("Access-Control-Allow-Origin", "*" if policy.allow_any_origin else origins[0])]
    if policy.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if policy.expose_value:
        out.append(("Access-Control-Expose-Headers", policy.expose_value))
    return out


def add_vary(existing: Iterable[str], *names: str) -> str:
    """`Vary` with `names` added to what is there, never replacing it (and `*` stays `*`)."""
    current = [v.strip() for value in existing for v in value.split(",") if v.strip()]
    if "*" in current:
        return "*"
    lower = {v.lower() for v in current}
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if part and part.lower() not in lower:
                current.append(part)
                lower.add(part.lower())
    return ", ".join(current)
