"""Reads the `rate_limits` and `redis` sections.

    rate_limits:
      api:   {limit: 100, per: 1m, key: client_ip}
      login: {limit: 5, per: 15m, key: client_ip, algorithm: fixed_window}
      tenant: {limit: 50, per: 1s, key: "client_ip+header:X-Tenant", algorithm: token_bucket,
               burst: 100, mode: shadow}
    redis: {url: "${REDIS_URL:-}", timeout: 100ms, failure_mode: open, key_prefix: "gw:",
            fallback: divide}
"""

from __future__ import annotations

import ipaddress
import re

import yaml

from gateway.config.reader import Reader, named_mapping
from gateway.redis import endpoint as redis_endpoint
from gateway.settings.ratelimit import (
    ALGORITHMS,
    FAILURE_MODES,
    FALLBACKS,
    MODES,
    KeyPart,
    RateLimitPolicy,
    RedisSettings,
)
from gateway.tokens import TOKEN

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")

KEYS = {
    "rate_limits.*": ("limit", "per", "key", "algorithm", "burst", "mode", "ipv6_prefix",
                      "exempt"),
    "redis": ("url", "timeout", "failure_mode", "key_prefix", "fallback"),
}


_CLAIM = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def parse_key(text: str) -> tuple[KeyPart, ...] | str:
    """Key parts from `client_ip+header:X-Tenant`, or an error message."""
    parts: list[KeyPart] = []
    for raw in text.split("+"):
        item = raw.strip()
        if item in ("client_ip", "global"):
            parts.append(KeyPart(item))
        elif item == "jwt" or item.startswith("jwt:"):
            claim = item[len("jwt:"):].strip() if item != "jwt" else "sub"
            if not _CLAIM.fullmatch(claim):
                return f"{claim!r} is not a JWT claim name"
            parts.append(KeyPart("jwt", claim=claim))
        elif item.startswith("header:"):
            name = item[len("header:"):].strip()
            if not TOKEN.fullmatch(name):
                return f"{name!r} is not a valid header name"
            parts.append(KeyPart("header", name.lower()))
        else:
            return (f"unknown key part {item!r} (use client_ip, header:<Name>, jwt:<claim> "
                    "or global)")
    if len(set(parts)) != len(parts):
        return "a key part is repeated"
    if KeyPart("global") in parts and len(parts) > 1:
        return "'global' cannot be combined with other key parts"
    return tuple(parts)


def read_rate_limits(r: Reader, node: yaml.Node) -> dict[str, RateLimitPolicy]:
    out: dict[str, RateLimitPolicy] = {}
    for name, value in named_mapping(r, node, "rate_limits", "limits").items():
        if not _NAME.fullmatch(name):
            r.error(value, f"rate limit name {name!r} must be letters, digits, '-', '_' or '.'")
            continue
        policy = _read_one(r, name, value)
        if policy is not None:
            out[name] = policy
    return out


def _read_one(r: Reader, name: str, node: yaml.Node) -> RateLimitPolicy | None:
    where = f"rate_limits.{name}"
    m = r.mapping(node, KEYS["rate_limits.*"], where)
    if m is None:
        return None
    for required in ("limit", "per"):
        if required not in m:
            r.error(node, f"{where} needs '{required}'")
    limit = r.integer(m["limit"], f"{where}.limit", 1, 10**9) if "limit" in m else None
    per = r.duration(m["per"], f"{where}.per") if "per" in m else None
    if per is not None and per < 0.001:
        r.error(m["per"], f"{where}.per must be at least 1ms")
        per = None
    key: tuple[KeyPart, ...] | None = (KeyPart("client_ip"),)
    if "key" in m:
        text = r.string(m["key"], f"{where}.key")
        parsed = parse_key(text) if text is not None else None
        if isinstance(parsed, str):
            r.error(m["key"], f"{where}.key: {parsed}")
            key = None
        else:
            key = parsed
    algorithm = _choice(r, m, "algorithm", ALGORITHMS, "sliding_window", where)
    mode = _choice(r, m, "mode", MODES, "enforce", where)
    burst = None
    if "burst" in m:
        burst = r.integer(m["burst"], f"{where}.burst", 1, 10**9)
        if algorithm is not None and algorithm != "token_bucket":
            r.error(m["burst"], f"{where}.burst applies only to algorithm token_bucket")
            burst = None
    ipv6_prefix = r.integer(m["ipv6_prefix"], f"{where}.ipv6_prefix", 8, 128) \
        if "ipv6_prefix" in m else 64
    exempt: tuple | None = ()
    if "exempt" in m:
        nets = []
        for item, text in r.string_list(m["exempt"], f"{where}.exempt") or ():
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                r.error(item, f"{where}.exempt: {text!r} is not a CIDR ({exc})")
                exempt = None
        if exempt is not None:
            exempt = tuple(nets)
    if None in (limit, per, key, algorithm, mode, ipv6_prefix, exempt):
        return None
    return RateLimitPolicy(name=name, limit=limit, period_ms=round(per * 1000), key=key,
                           algorithm=algorithm, burst=burst, mode=mode, ipv6_prefix=ipv6_prefix,
                           exempt=exempt)


def _choice(r: Reader, m: dict[str, yaml.Node], key: str, allowed: tuple[str, ...],
            default: str, where: str) -> str | None:
    if key not in m:
        return default
    value = r.string(m[key], f"{where}.{key}")
    if value is not None and value not in allowed:
        r.error(m[key], f"{where}.{key} must be one of {', '.join(allowed)}; got {value!r}")
        return None
    return value


def read_redis(r: Reader, node: yaml.Node) -> RedisSettings | None:
    m = r.mapping(node, KEYS["redis"], "redis")
    if m is None:
        return None
    d = RedisSettings()
    url = d.url
    if "url" in m:
        url = r.string(m["url"], "redis.url") if not _is_null(m["url"]) else ""
        if url:
            try:
                redis_endpoint.parse(url)
            except ValueError as exc:
                r.error(m["url"], f"redis.url {exc}" + (" (or be empty)" if "://" in str(exc)
                                                        else ""))
                url = None
    timeout = r.duration(m["timeout"], "redis.timeout") if "timeout" in m else d.timeout
    failure_mode = _choice(r, m, "failure_mode", FAILURE_MODES, d.failure_mode, "redis")
    prefix = r.string(m["key_prefix"], "redis.key_prefix") if "key_prefix" in m \
        else d.key_prefix
    if prefix is not None and ("{" in prefix or "}" in prefix):
        r.error(m["key_prefix"], "redis.key_prefix must not contain '{' or '}' (hash tags)")
        prefix = None
    fallback = _choice(r, m, "fallback", FALLBACKS, d.fallback, "redis")
    if None in (url, timeout, failure_mode, prefix, fallback):
        return None
    return RedisSettings(url=url, timeout=timeout, failure_mode=failure_mode, key_prefix=prefix,
                         fallback=fallback)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
