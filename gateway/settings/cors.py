"""CORS settings: a `CorsPolicy`, its origin patterns checked strictly when the policy loads.

A `CorsPolicy` is normalized once when the policy loads (like Starlette's middleware, and as
strict as jub0bs/cors): every origin pattern is parsed, and anything ambiguous or dangerous is
refused with a message. The request-time decisions (`preflight()`, `actual()`) live in
gateway/cors.py.

Origin patterns:
  https://app.example.com        exactly that origin (the serialized form: lower-case host,
                                 no default port, no path, no trailing slash)
  https://*.example.com          any subdomain, at any depth (not example.com itself)
  http://localhost:*             any port
  *                              any origin (never with credentials)
Matching is on the parsed origin, never by prefix, suffix, substring or regular expression.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from gateway.tokens import REFUSED_METHODS, TOKEN

# Fetch's CORS-safelisted methods need no listing; these are never allowed.
SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
FORBIDDEN_METHODS = REFUSED_METHODS
_FORBIDDEN_HEADERS = frozenset({
    "accept-charset", "accept-encoding", "access-control-request-headers",
    "access-control-request-method", "connection", "content-length", "cookie", "cookie2",
    "date", "dnt", "expect", "host", "keep-alive", "origin", "referer", "set-cookie", "te",
    "trailer", "transfer-encoding", "upgrade", "via"})
_TOKEN = TOKEN
_LABEL = re.compile(r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?")
_METHOD = re.compile(r"[A-Za-z]+")
MAX_AGE_LIMIT = 86400
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


T = TypeVar("T")


class CorsError(ValueError):
    """A CORS setting that is refused; `field` names the setting, `index` the list entry."""

    def __init__(self, message: str, field: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # lower-case; IPv6 in brackets
    port: int | None  # None: the scheme's default


@lru_cache(maxsize=4096)
def parse_origin(text: str) -> Origin | None:
    """An Origin header value in serialized form, or None when it is not one."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        return None
    if rest.startswith("["):
        host, bracket, after = rest.partition("]")
        host += bracket
        port_text = after[1:] if after.startswith(":") else None
        if after and port_text is None:
            return None
    else:
        host, colon, port_text = rest.partition(":")
        port_text = port_text if colon else None
    if not _valid_host(host):
        return None
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or port_text.startswith("0") \
                or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
        if port == (443 if scheme == "https" else 80):
            return None  # browsers never write the default port
    return Origin(scheme, host, port)


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return host.endswith("]")
    labels = host.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and len(host) <= 253


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Pattern:
    scheme: str
    host_suffix: str  # ".example.com" for a subdomain wildcard, else the exact host
    subdomains: bool
    port: int | None
    any_port: bool

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme:
            return False
        if not self.any_port and origin.port != self.port:
            return False
        if self.subdomains:
            return origin.host.endswith(self.host_suffix) and \
                len(origin.host) > len(self.host_suffix)
        return origin.host == self.host_suffix


def _parse_pattern(text: str, credentials: bool, allow_public_suffix: bool,
                   allow_insecure: bool, index: int) -> tuple[str | None, _Pattern | None]:
    """(exact origin, None) or (None, pattern); raises CorsError."""
    def fail(message: str) -> CorsError:
        return CorsError(f"origin {text!r}: {message}", "allow_origins", index)

    if text != text.strip() or any(c.isspace() for c in text):
        raise fail("whitespace is not allowed")
    if text == "null" or text.startswith("file:"):
        raise fail("'null' and file: origins can be forged by any sandboxed page; never allow them")
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https") and text != text.lower():
        raise fail("origins are compared in lower case; write it in lower case")
    if not sep or scheme not in ("http", "https"):
        raise fail("must start with http:// or https://")
    if any(c in rest for c in "/?#"):
        raise fail("an origin has no path, query, fragment or trailing slash")
    if "@" in rest:
        raise fail("an origin has no userinfo")
    if rest != rest.lower():
        raise fail("hosts are compared in lower case; write it in lower case")
    subdomains = rest.startswith("*.")
    hostport = rest[2:] if subdomains else rest
    any_port = hostport.endswith(":*")
    if any_port:
        hostport = hostport[:-2]
    if "*" in hostport:
        raise fail("'*' is allowed only as a leading '*.' label or as the port ':*'")
    probe = parse_origin(f"{scheme}://{hostport}")
    if probe is None:
        raise fail("not a valid origin (bad host or port, or the default port written out)")
    if subdomains and (hostport.startswith("[") or
                       all(label.isdigit() for label in probe.host.split("."))):
        raise fail("'*.' cannot precede an IP address")
    if credentials and scheme == "http" and not _is_loopback(probe.host) and not allow_insecure:
        raise fail("plain-http origins with credentials can be impersonated on the network; "
                   "use https (or set dangerously_allow_insecure_origins)")
    if subdomains:
        suffix = probe.host
        if _is_public_suffix(suffix) and not allow_public_suffix:
            raise fail(f"'*.{suffix}' would allow every site under a public suffix "
                       "(set dangerously_allow_public_suffix_wildcard to insist)")
        return None, _Pattern(scheme, "." + suffix, True, probe.port, any_port)
    if any_port:
        return None, _Pattern(scheme, probe.host, False, None, True)
    return text, None


@lru_cache(maxsize=1)
def _public_suffixes():  # loaded once, on the first wildcard
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def _is_public_suffix(host: str) -> bool:
    if host.replace(".", "").isdigit():
        return False
    return bool(_public_suffixes().is_public(host))


@dataclass(frozen=True)
class CorsPolicy:
    name: str
    allow_any_origin: bool
    exact: frozenset[str]
    patterns: tuple[_Pattern, ...]
    allow_methods: tuple[str, ...]
    allow_headers: frozenset[str]  # lower-case
    allow_any_header: bool
    expose_headers: tuple[str, ...]
    allow_credentials: bool
    max_age: int | None  # seconds; None: not sent
    # header values computed once
    methods_value: str = field(default="")
    headers_value: str = field(default="")
    expose_value: str = field(default="")

    @classmethod
    def build(cls, name: str, allow_origins: Sequence[str], **settings: Any) -> CorsPolicy:
        """A validated policy; raises CorsError naming the setting at fault (the first of
        them; `check` gives them all)."""
        policy, problems = cls.check(name, allow_origins, **settings)
        if problems:
            raise problems[0]
        assert policy is not None
        return policy

    @classmethod
    def check(
        cls,
        name: str,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str] = ("GET", "HEAD", "POST"),
        allow_headers: Sequence[str] = (),
        expose_headers: Sequence[str] = (),
        allow_credentials: bool = False,
        max_age: float | None = None,
        dangerously_allow_public_suffix_wildcard: bool = False,
        dangerously_allow_insecure_origins: bool = False,
    ) -> tuple[CorsPolicy | None, list[CorsError]]:
        """The policy and every problem with it (each names its setting); the policy is
        None when there is any problem."""
        problems: list[CorsError] = []

        def attempt(check: Callable[[], T], fallback: T) -> T:
            try:
                return check()
            except CorsError as exc:
                problems.append(exc)
                return fallback

        if not allow_origins:
            problems.append(CorsError("allow_origins must list at least one origin",
                                      "allow_origins"))
        any_origin = "*" in allow_origins
        if any_origin and allow_credentials:
            problems.append(CorsError("'*' with allow_credentials would let every site read "
                                      "credentialed responses; list the origins",
                                      "allow_origins", list(allow_origins).index("*")))
        if any_origin and len(allow_origins) > 1:
            problems.append(CorsError("'*' already allows every origin; list it alone",
                                      "allow_origins", list(allow_origins).index("*")))
        exact: set[str] = set()
        patterns: list[_Pattern] = []
        if not any_origin:
            for i, text in enumerate(allow_origins):
                origin, pattern = attempt(lambda text=text, i=i: _parse_pattern(
                    text, allow_credentials, dangerously_allow_public_suffix_wildcard,
                    dangerously_allow_insecure_origins, i), (None, None))
                if origin is not None:
                    exact.add(origin)  # repeats are harmless (origins often come from ${VAR}s)
                elif pattern is not None:
                    patterns.append(pattern)
        methods = attempt(lambda: _methods(allow_methods), ())
        any_header = "*" in allow_headers
        if any_header and allow_credentials:
            problems.append(CorsError("allow_headers '*' is a literal name when credentials are "
                                      "allowed; list the headers", "allow_headers",
                                      list(allow_headers).index("*")))
        headers = attempt(lambda: _header_names(allow_headers, "allow_headers",
                                                allow_star=True), ())
        if "*" in expose_headers and allow_credentials:
            problems.append(CorsError("expose_headers '*' does not work with credentials; list "
                                      "the headers", "expose_headers",
                                      list(expose_headers).index("*")))
        exposed = attempt(lambda: _header_names(expose_headers, "expose_headers",
                                                allow_star=True, forbidden_ok=True), ())
        age = None
        if max_age is not None:
            if not 0 <= max_age <= MAX_AGE_LIMIT:
                problems.append(CorsError("max_age must be between 0s and 24h", "max_age"))
            else:
                age = int(max_age)
        if problems:
            return None, problems
        policy = cls(name=name, allow_any_origin=any_origin, exact=frozenset(exact),
                     patterns=tuple(patterns), allow_methods=methods,
                     allow_headers=frozenset(h.lower() for h in headers if h != "*"),
                     allow_any_header=any_header, expose_headers=tuple(exposed),
                     allow_credentials=allow_credentials, max_age=age)
        object.__setattr__(policy, "methods_value", ", ".join(methods))
        object.__setattr__(policy, "headers_value", ", ".join(headers))
        object.__setattr__(policy, "expose_value", ", ".join(exposed))
        return policy, []

    def allows_origin(self, origin: str) -> bool:
        if self.allow_any_origin:
            return parse_origin(origin) is not None
        if origin in self.exact:
            return True
        if not self.patterns:
            return False
        parsed = parse_origin(origin)
        return parsed is not None and any(p.matches(parsed) for p in self.patterns)


def _methods(methods: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for i, method in enumerate(methods):
        if not _METHOD.fullmatch(method):
            raise CorsError(f"{method!r} is not a method name", "allow_methods", i)
        if method.upper() in FORBIDDEN_METHODS:
            raise CorsError(f"{method} is forbidden by the Fetch standard", "allow_methods", i)
        if method != method.upper():
            raise CorsError(f"{method!r}: methods compare case-sensitively; write "
                            f"{method.upper()!r}", "allow_methods", i)
        if method in out:
            raise CorsError(f"{method} is listed twice", "allow_methods", i)
        out.append(method)
    return tuple(out)


def _header_names(names: Iterable[str], what: str, allow_star: bool,
                  forbidden_ok: bool = False) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name == "*" and allow_star:
            out.append(name)
            continue
        if not _TOKEN.fullmatch(name):
            raise CorsError(f"{name!r} is not a header name", what, i)
        low = name.lower()
        if not forbidden_ok and (low in _FORBIDDEN_HEADERS or low.startswith(("sec-", "proxy-"))
                                 or low.startswith("access-control-")):
            raise CorsError(f"{name} is a forbidden request header; browsers never let pages "
                            "send it", what, i)
        if low in seen:
            raise CorsError(f"{name} is listed twice", what, i)
        seen.add(low)
        out.append(name)
    return out
