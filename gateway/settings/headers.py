"""Security-header settings: one validator per header (as helmet does), run when the policy
loads, so a bad value fails at start-up rather than in a browser, and the `HeadersPolicy` they
build. Applying it to a response is gateway/security_headers.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.tokens import TOKEN

HSTS = "strict-transport-security"
_TOKEN = TOKEN
ONE_YEAR = 31536000

CSP_DIRECTIVES = frozenset({
    "base-uri", "child-src", "connect-src", "default-src", "fenced-frame-src", "font-src",
    "form-action", "frame-ancestors", "frame-src", "img-src", "manifest-src", "media-src",
    "object-src", "prefetch-src", "report-to", "report-uri", "require-trusted-types-for",
    "sandbox", "script-src", "script-src-attr", "script-src-elem", "style-src",
    "style-src-attr", "style-src-elem", "trusted-types", "upgrade-insecure-requests",
    "worker-src", "block-all-mixed-content"})
_CSP_KEYWORDS = frozenset({
    "'self'", "'none'", "'unsafe-inline'", "'unsafe-eval'", "'strict-dynamic'",
    "'unsafe-hashes'", "'report-sample'", "'wasm-unsafe-eval'", "'inline-speculation-rules'",
    "'unsafe-allow-redirects'", "'script'"})
_CSP_BARE_KEYWORDS = {k.strip("'") for k in _CSP_KEYWORDS}
_CSP_NONCE_HASH = re.compile(r"'(nonce-[A-Za-z0-9+/=_\-]+|sha(256|384|512)-[A-Za-z0-9+/=_\-]+)'")
REFERRER_POLICIES = frozenset({
    "no-referrer", "no-referrer-when-downgrade", "origin", "origin-when-cross-origin",
    "same-origin", "strict-origin", "strict-origin-when-cross-origin", "unsafe-url"})
_ENUMS = {
    "x-frame-options": ("DENY", "SAMEORIGIN"),
    "x-content-type-options": ("nosniff",),
    "cross-origin-opener-policy": ("same-origin", "same-origin-allow-popups", "unsafe-none",
                                   "noopener-allow-popups"),
    "cross-origin-resource-policy": ("same-origin", "same-site", "cross-origin"),
    "cross-origin-embedder-policy": ("require-corp", "credentialless", "unsafe-none"),
}
_PERMISSION = re.compile(r'[a-z][a-z0-9\-]*=(\*|\(\s*\)|\((\s*(self|src|\*|"[^"\s]+")\s*)+\)|self)')


class HeaderValueError(ValueError):
    pass


def check_csp(value: str) -> None:
    seen: set[str] = set()
    for directive in value.split(";"):
        tokens = directive.split()
        if not tokens:
            continue
        name = tokens[0].lower()
        if name not in CSP_DIRECTIVES:
            raise HeaderValueError(f"unknown CSP directive {tokens[0]!r}")
        if name in seen:
            raise HeaderValueError(f"CSP directive {name} appears twice (browsers ignore the "
                                   "second)")
        seen.add(name)
        for source in tokens[1:]:
            if "," in source:
                raise HeaderValueError(f"',' inside CSP source {source!r}: separate directives "
                                       "with ';' and sources with spaces")
            if source.startswith("'"):
                if source not in _CSP_KEYWORDS and not _CSP_NONCE_HASH.fullmatch(source):
                    raise HeaderValueError(f"unknown quoted CSP keyword {source}")
            elif source.lower() in _CSP_BARE_KEYWORDS:
                raise HeaderValueError(f"CSP keyword {source} must be quoted: '{source}'")


def check_hsts(value: str) -> None:
    parts = [p.strip() for p in value.split(";") if p.strip()]
    names = [p.split("=", 1)[0].strip().lower() for p in parts]
    if names.count("max-age") != 1:
        raise HeaderValueError("Strict-Transport-Security needs exactly one max-age")
    max_age = parts[names.index("max-age")].split("=", 1)[1].strip().strip('"')
    if not (max_age.isascii() and max_age.isdigit()):
        raise HeaderValueError("Strict-Transport-Security max-age must be a non-negative integer")
    for name in names:
        if name not in ("max-age", "includesubdomains", "preload"):
            raise HeaderValueError(f"unknown Strict-Transport-Security directive {name!r}")
    if "preload" in names and ("includesubdomains" not in names or int(max_age) < ONE_YEAR):
        raise HeaderValueError("preload needs includeSubDomains and max-age of at least a year "
                               f"({ONE_YEAR})")


def check_referrer_policy(value: str) -> None:
    for token in (t.strip() for t in value.split(",")):
        if token not in REFERRER_POLICIES:
            raise HeaderValueError(f"{token!r} is not a Referrer-Policy token")


def check_permissions_policy(value: str) -> None:
    for item in (i.strip() for i in value.split(",")):
        if not _PERMISSION.fullmatch(item):
            raise HeaderValueError(f"{item!r} is not a Permissions-Policy entry "
                                   "(write feature=() or feature=(self \"https://x\"))")


def check_xss_protection(value: str) -> None:
    if value.strip() != "0":
        raise HeaderValueError("X-XSS-Protection must be 0: the auditor that '1; mode=block' "
                               "enables could be abused for cross-site leaks and browsers removed "
                               "it")


VALIDATORS: dict[str, Callable[[str], None]] = {
    "content-security-policy": check_csp,
    "content-security-policy-report-only": check_csp,
    HSTS: check_hsts,
    "referrer-policy": check_referrer_policy,
    "permissions-policy": check_permissions_policy,
    "x-xss-protection": check_xss_protection,
}


def check_header(name: str, value: str) -> None:
    """Raise HeaderValueError when `name: value` is malformed or known to be unsafe."""
    if not _TOKEN.fullmatch(name):
        raise HeaderValueError(f"{name!r} is not a header name")
    if any(c in value for c in "\r\n\0"):
        raise HeaderValueError(f"the value of {name} contains CR, LF or NUL")
    low = name.lower()
    if low in _ENUMS and value not in _ENUMS[low]:
        raise HeaderValueError(f"{name} must be one of {', '.join(_ENUMS[low])}; got {value!r}")
    validator = VALIDATORS.get(low)
    if validator is not None:
        validator(value)


@dataclass(frozen=True, slots=True)
class HeadersPolicy:
    name: str
    set: tuple[tuple[str, str], ...]  # without Strict-Transport-Security
    set_if_missing: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]
    hsts: str | None = None

    @classmethod
    def build(cls, name: str, set: Mapping[str, str] | None = None,
              set_if_missing: Mapping[str, str] | None = None,
              remove: Sequence[str] = ()) -> HeadersPolicy:
        """A validated policy; raises HeaderValueError naming the header at fault."""
        seen: dict[str, str] = {}
        for section, names in (("set", (set or {}).keys()),
                               ("set_if_missing", (set_if_missing or {}).keys()),
                               ("remove", remove)):
            for header in names:
                if header.lower() in seen:
                    raise HeaderValueError(f"{header} appears in both {seen[header.lower()]} and "
                                           f"{section}" if seen[header.lower()] != section
                                           else f"{header} is listed twice in {section}")
                seen[header.lower()] = section
        for header, value in {**(set or {}), **(set_if_missing or {})}.items():
            check_header(header, value)
        for header in remove:
            if not _TOKEN.fullmatch(header):
                raise HeaderValueError(f"{header!r} is not a header name")
        hsts = None
        plain = []
        for header, value in (set or {}).items():
            if header.lower() == HSTS:
                hsts = value
            else:
                plain.append((header, value))
        missing = tuple((set_if_missing or {}).items())
        if any(h.lower() == HSTS for h, _ in missing):
            raise HeaderValueError("Strict-Transport-Security belongs in set, not set_if_missing")
        return cls(name, tuple(plain), missing, tuple(remove), hsts)
