"""Property-based tests of the policy loader: random and mutated documents (hypothesis).

`load_policy` must never raise anything but its own PolicyError (every problem reading
FILE:LINE:COL: message), and must never accept a document that the reference, docs/policy.md,
says is invalid. The reference checker below is transcribed by hand from the tables in
docs/policy.md, not derived from the loader. It answers "valid", "invalid", or "unspecified"
where the reference leaves a question open; unspecified examples are skipped.
"""

from __future__ import annotations

import atexit
import copy
import ipaddress
import math
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import Phase, assume, given, note, settings
from hypothesis import strategies as st

from gateway.config import Loaded, PolicyError, Problem, load_policy
from gateway.config.loader import KEYS
from gateway.settings.policy import Policy
from tests.support.policy import write_policy
from tests.support.scale import scaled

# thousands of generated policies: half a minute of CPU (`-m "unit and not slow"` skips them)
pytestmark = pytest.mark.slow

# Function-scoped fixtures (tmp_path) do not mix with @given: one directory for the module.
_DIR = Path(tempfile.mkdtemp(prefix="policy-properties-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
POLICY = _DIR / "policy.yaml"

# Each example costs ~10 ms (a document dumped, loaded by the gateway and read back): the
# default suite runs ~3,000 of them, a full run (scripts/test.sh --full) five times as many.
EXAMPLES = scaled(150, 750)  # random documents, random text, invalid mutations
PER_KIND = scaled(20, 100)  # each parametrized kind of value or mutation (about forty of each)
# No "explain" phase: tracing every failing example would take minutes, not seconds.
PHASES = tuple(phase for phase in Phase if phase is not Phase.explain)


def load(data: str | bytes, environ: dict[str, str] | None = None) -> Loaded:
    return load_policy(write_policy(_DIR, data), {} if environ is None else environ)


def dump(doc: Any) -> str:
    # libyaml both ways (as the gateway's loader): PyYAML's pure-Python emitter and parser
    # took ~30 ms a document, most of this module's time
    text = yaml.dump(doc, Dumper=yaml.CSafeDumper, sort_keys=False)  # non-ASCII escaped:
    # NEL, LS stay in the value
    assert repr(yaml.load(text, Loader=yaml.CSafeLoader)) == repr(doc), \
        "the harness must write what it means"
    return text


_POSITION = re.compile(r"([0-9]+):([0-9]+): (.+)", re.DOTALL)


def assert_positioned(problem: Problem) -> None:
    """It reads FILE:LINE:COL: message, FILE the path loaded, LINE and COL >= 1."""
    prefix = f"{POLICY}:"
    text = str(problem)
    assert text.startswith(prefix), text
    m = _POSITION.fullmatch(text[len(prefix):])
    assert m is not None, text
    assert int(m[1]) >= 1 and int(m[2]) >= 1, text


def assert_well_formed(error: PolicyError) -> None:
    """Every problem reads FILE:LINE:COL: message, FILE the path loaded, LINE and COL >= 1."""
    assert error.problems, "a PolicyError without any problem"
    for problem in error.problems:
        assert not problem.warning, f"a warning among the errors: {problem}"
        assert_positioned(problem)


# =================================================================================================
# The reference: docs/policy.md as a checker
# =================================================================================================

VALID, INVALID, UNSPECIFIED = "valid", "invalid", "unspecified"
Result = tuple[str, Any]  # (VALID, parsed value) or (INVALID | UNSPECIFIED, reason)


def ok(value: Any) -> Result:
    return VALID, value


def bad(why: str) -> Result:
    return INVALID, why


def unsure(why: str) -> Result:
    return UNSPECIFIED, why


def combine(results: Iterable[Result]) -> Result:
    """All valid: the list of parsed values; else the first invalid, else the first unsure."""
    results = list(results)
    for state in (INVALID, UNSPECIFIED):
        for result in results:
            if result[0] == state:
                return result
    return ok([value for _, value in results])


def ref_integer(value: Any, lo: int | None = None, hi: int | None = None) -> Result:
    if type(value) is not int:
        return bad(f"{value!r} is not an integer")
    if lo is not None and value < lo:
        return bad(f"{value} is below {lo}")
    if hi is not None and value > hi:
        return bad(f"{value} is above {hi}")
    return ok(value)


def ref_version(value: Any) -> Result:
    state, parsed = ref_integer(value)
    if state == VALID and parsed != 1:
        return bad("version must be 1")
    return state, parsed


def ref_boolean(value: Any) -> Result:
    return ok(value) if type(value) is bool else bad(f"{value!r} is not a boolean")


def ref_string(value: Any) -> Result:
    return ok(value) if type(value) is str else bad(f"{value!r} is not a string")


def ref_nonempty_string(value: Any) -> Result:
    return bad("an empty string") if value == "" else ref_string(value)


def ref_rate(value: Any) -> Result:  # number 0-1
    if type(value) not in (int, float):
        return bad(f"{value!r} is not a number")
    return ok(float(value)) if 0 <= value <= 1 else bad(f"{value} is not within 0-1")


def ref_choice(*allowed: str) -> Callable[[Any], Result]:
    def check(value: Any) -> Result:
        return ok(value) if type(value) is str and value in allowed else bad(f"not in {allowed}")
    return check


# "Durations need a unit: 500ms, 1s, 15m, 24h, 1d, or combined: 1h30m."
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600),
            "d": Fraction(86400)}


def ref_duration(value: Any, lo: Fraction | None = None, hi: Fraction | None = None,
                 zero: str = UNSPECIFIED) -> Result:
    """Seconds, exactly; `zero` is what the reference says about a zero duration."""
    if type(value) is not str:
        return bad(f"{value!r}: a duration is text with a unit")
    if value != value.strip():
        return unsure("white space around a duration")
    if not _DURATION.fullmatch(value):
        return bad(f"{value!r} is not a duration")
    if "." in value:
        return unsure("fractional durations are not documented")
    seconds = sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    if seconds == 0 and zero != VALID:
        return zero, "a zero duration"
    if lo is not None and seconds < lo:
        return bad(f"{value} is below the minimum")
    if hi is not None and seconds > hi:
        return bad(f"{value} is above the maximum")
    return ok(seconds)


def ref_per(value: Any) -> Result:  # rate_limits.*.per: duration >= 1ms
    return ref_duration(value, lo=Fraction(1, 1000), zero=INVALID)


def ref_max_age(value: Any) -> Result:  # cors.*.max_age: duration 0-24h
    return ref_duration(value, hi=Fraction(86400), zero=VALID)


# "Sizes are bytes, or with a unit: 8KiB, 10MiB, 1GiB (binary) or 1KB, 1MB, 1GB (decimal)."
_SIZE = re.compile(r"([0-9]+)(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000,
               "MB": 1000**2, "GB": 1000**3}


def ref_size(value: Any) -> Result:
    if type(value) is int:
        size = value
    elif type(value) is str:
        if value != value.strip():
            return unsure("white space around a size")
        m = _SIZE.fullmatch(value)
        if m is None:
            if re.fullmatch(r"[0-9]+\s+(B|KiB|MiB|GiB|KB|MB|GB)", value):
                return unsure("a space between number and unit")
            return bad(f"{value!r} is not a size")
        size = int(m[1]) * _SIZE_UNITS[m[2]]
    else:
        return bad(f"{value!r} is not a size")
    if size < 0:
        return bad("a negative size")
    if size == 0:
        return unsure("a zero size")
    return ok(size)


_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_dns_name(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_DNS_LABEL.fullmatch(x) for x in text.split("."))


def ref_address(value: Any) -> Result:
    """HOST:PORT, IPv6 as [::]:8080. Parsed: (host as written, port, ip)."""
    if type(value) is not str:
        return bad(f"{value!r} is not HOST:PORT")
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
    bracketed = m is not None
    if m is None:
        m = re.fullmatch(r"([^\[\]]*):([^:\[\]]*)", value)
        if m is None:
            return bad(f"{value!r} is not HOST:PORT")
    host, port = m[1], m[2]
    if not re.fullmatch(r"[0-9]+", port):
        return bad(f"port {port!r} is not a number")
    if len(port) > 1 and port[0] == "0":
        return unsure("a port with a leading zero")
    if int(port) > 65535:
        return bad("port above 65535")
    if int(port) == 0:
        return unsure("port 0")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if bracketed:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return bad(f"[{host}] is not an IPv6 address")
            return unsure("an IPv4 address in brackets")
        return ok((host, int(port), ip))
    if ":" in host:
        return bad("IPv6 is written in brackets: [::]:8080")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        if is_dns_name(host):
            return unsure("a host name rather than an address")
        return bad(f"{host!r} is not a host")
    return ok((host, int(port), ip))


def ref_cidr(item: Any) -> Result:
    """CIDR, host bits zero (10.0.0.0/8, 127.0.0.1/32)."""
    if type(item) is not str:
        return bad(f"{item!r} is not a CIDR")
    if "/" not in item:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return bad(f"{item!r} is not a CIDR")
        return unsure("an address without a prefix length")
    address, length = item.split("/", 1)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return bad(f"{address!r} is not an address")
    if not re.fullmatch(r"[0-9]+", length):
        try:
            ipaddress.ip_address(length)
        except ValueError:
            return bad(f"prefix length {length!r} is not a number")
        return unsure("a netmask instead of a prefix length")
    if len(length) > 1 and length[0] == "0":
        return unsure("a prefix length with a leading zero")
    bits = ip.max_prefixlen
    if int(length) > bits:
        return bad("prefix length too long")
    if int(ip) & ((1 << (bits - int(length))) - 1):
        return bad("host bits must be zero")
    return ok(ipaddress.ip_network(item))


def ref_networks(value: Any) -> Result:
    """A list of CIDRs, or one string of them separated by commas or spaces, or `none`."""
    if type(value) is str:
        words = value.replace(",", " ").split()
        if words == ["none"]:
            return VALID, []
        return combine(ref_cidr(word) for word in words)
    if type(value) is not list:
        return bad("a list of CIDRs")
    return combine(ref_cidr(item) for item in value)


_URL = re.compile(r"(?P<scheme>[^:/?#]*)://(?:(?P<user>[^@/?#]*)@)?"
                  r"(?P<host>\[[^\]/?#]*\]|[^:/?#@\[\]]*)(?::(?P<port>[^/?#]*))?"
                  r"(?P<path>/[^?#]*)?(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?", re.DOTALL)
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def ref_url(value: Any) -> Result:
    """http://host:port or https://host:port, no path, query or userinfo. Parsed:
    (scheme, host, port)."""
    if type(value) is not str:
        return bad(f"{value!r} is not a URL")
    m = _URL.fullmatch(value)
    if m is None:
        return bad(f"{value!r} is not a URL")
    scheme, host, port = m["scheme"], m["host"], m["port"]
    if scheme not in ("http", "https"):
        if scheme.lower() in ("http", "https"):
            return unsure("an upper-case scheme")
        return bad(f"scheme {scheme!r}")
    if m["user"]:
        return bad("userinfo")
    if m["query"] or m["fragment"] or m["path"] not in (None, "/"):
        return bad("a path, query or fragment")
    if m["path"] == "/" or "" in (m["query"], m["fragment"], m["user"]):
        return unsure("an empty path, query, fragment or userinfo")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return bad(f"{host} is not an IPv6 address")
        host = host[1:-1].lower()
    elif not host:
        return bad("no host")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if re.fullmatch(r"[0-9.]+", host):
                return unsure("a numeric host that is not an IPv4 address")
            if not is_dns_name(host):
                if _REG_NAME.fullmatch(host) or not host.isascii():
                    return unsure("a host that is no DNS name")
                return bad(f"{host!r} is not a host")
        host = host.lower()
    if port is None:
        number = 443 if scheme == "https" else 80
    elif port == "":
        return unsure("an empty port")
    elif not re.fullmatch(r"[0-9]+", port):
        return bad(f"port {port!r} is not a number")
    elif len(port) > 1 and port[0] == "0":
        return unsure("a port with a leading zero")
    elif not 1 <= int(port) <= 65535:
        return bad(f"port {port} is out of range")
    else:
        number = int(port)
    return ok((scheme, host, number))


def ref_targets(value: Any) -> Result:
    if type(value) is not list:
        return bad("a list of URLs")
    if not value:
        return unsure("an empty list of targets")
    return combine(ref_url(item) for item in value)


# Route paths "must be in normalized form" (README, "Path normalization").
_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_PCHAR = _UNRESERVED + "!$&'()*+,;=:@"


def ref_route_path(value: Any) -> Result:
    if type(value) is not str:
        return bad(f"{value!r} is not a path")
    if not value.startswith("/"):
        return bad("a path starts with '/'")
    if any(c not in _PCHAR and c not in "/%" for c in value):
        return bad("a character that must be percent-encoded")
    segments = value[1:].split("/")
    for i, segment in enumerate(segments):
        if segment == "" and i != len(segments) - 1:
            return bad("repeated slashes are merged")
        if segment in (".", ".."):
            return bad("dot segments are resolved")
        if segment.startswith((".;", "..;")):
            return bad("dot segments with parameters are refused")
    doubtful = False
    for m in re.finditer(r"%(.?.?)", value):
        hexits = m[1]
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", hexits):
            return bad("malformed percent-encoding")
        char = chr(int(hexits, 16))
        if char in "/\\" or ord(char) < 0x20 or ord(char) == 0x7F:
            return bad("an ambiguous escape")
        if hexits != hexits.upper():
            return bad("escapes are upper-case in normalized form")
        if char in _UNRESERVED:
            return bad("escaped unreserved characters are decoded")
        doubtful = doubtful or char == "%"
    if doubtful:
        return unsure("an escaped '%'")
    return ok(value)


def ref_method(value: Any) -> Result:
    if type(value) is not str:
        return bad(f"{value!r} is not a method")
    if not value or not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        return bad(f"{value!r} is not a method name")
    if value != value.upper():
        return bad(f"{value!r} is not upper-case")
    if any(c not in string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~" for c in value):
        return bad(f"{value!r} is not an HTTP token")
    if not re.fullmatch(r"[A-Z][A-Z0-9_-]*", value):
        return unsure("an unusual method name")
    return ok(value)


def ref_methods(value: Any) -> Result:
    if type(value) is not list:
        return bad("a list of methods")
    if not value:
        return unsure("an empty list of methods")
    return combine(ref_method(item) for item in value)


_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def ref_host(value: Any) -> Result:
    """A lower-case host name; `*.example.com` matches any subdomain."""
    if type(value) is not str:
        return bad(f"{value!r} is not a host name")
    name = value[2:] if value.startswith("*.") else value
    if not name.isascii():
        return unsure("an internationalized host name")
    if name != name.lower():
        return bad("host names are lower-case")
    if name.endswith(".") and name != ".":
        return unsure("a trailing dot")
    if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return bad(f"{value!r} is not a host name")
    if re.fullmatch(r"[0-9.]+", name):
        return unsure("an address rather than a name")
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return unsure("a name beyond DNS limits")
    return ok(value)


def ref_route_name(value: Any) -> Result:
    """"1-63 letters, digits, -, _, ., starting with a letter or digit"; uniqueness is checked
    across routes."""
    if type(value) is not str:
        return bad(f"{value!r} is not a name")
    if not 1 <= len(value) <= 63:
        return bad("1-63 characters")
    if not value[0].isalnum():
        return bad("starts with a letter or digit")
    if all(c in string.ascii_letters + string.digits + "-_." for c in value):
        return ok(value)
    if all(c.isalnum() or c in "-_." for c in value):
        return unsure("non-ASCII letters or digits")
    return bad(f"{value!r} has characters other than letters, digits, '-', '_', '.'")


def ref_route_names(value: Any) -> Result:  # observability.access_log.exclude_routes
    if type(value) is not list:
        return bad("a list of route names")
    return combine(ref_route_name(item) if type(item) is str else bad(f"{item!r} is not a name")
                   for item in value)


_SENTRY_DSN = re.compile(r"https?://[0-9a-f]+@[a-z0-9.-]+(?::[0-9]{1,5})?/[0-9]+")


def ref_dsn(value: Any) -> Result:
    """A URL; empty: no Sentry."""
    if value is None or value == "":
        return ok("")
    if type(value) is not str:
        return bad(f"{value!r} is not a URL")
    if not value.startswith(("https://", "http://")):
        return bad("a DSN is an http(s) URL")
    return ok(value) if _SENTRY_DSN.fullmatch(value) else unsure("a DSN not modelled here")


_REDIS_URL = re.compile(r"(?:rediss?|redis\+cluster)://[a-z0-9.-]+:[0-9]{1,5}(?:/[0-9]+)?"
                        r"|redis\+sentinel://[a-z0-9.-]+:[0-9]{1,5}/[a-z]+(?:/[0-9]+)?"
                        r"|unix:///[a-z0-9/._-]+")


def ref_redis_url(value: Any) -> Result:
    if value is None or value == "":
        return ok("")
    if type(value) is not str:
        return bad(f"{value!r} is not a URL")
    if not value.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://",
                             "redis+cluster://")):
        return bad("not a documented Redis URL scheme")
    return ok(value) if _REDIS_URL.fullmatch(value) else unsure("a Redis URL not modelled here")


def ref_key_prefix(value: Any) -> Result:
    if type(value) is not str:
        return bad(f"{value!r} is not a string")
    return bad("no '{' or '}'") if "{" in value or "}" in value else ok(value)


def ref_limit_key(value: Any) -> Result:
    """client_ip, header:<Name>, global, or parts joined with +; global stands alone."""
    if type(value) is not str:
        return bad(f"{value!r} is not a string")
    parts = value.split("+")
    if any(p != p.strip() for p in parts):
        return unsure("white space in a key")
    for part in parts:
        if part not in ("client_ip", "global") and not re.fullmatch(
                r"header:[!#$%&'*.^_`|~0-9A-Za-z-]+", part):
            return bad(f"unknown key part {part!r}")
    if "global" in parts and len(parts) > 1:
        return bad("'global' stands alone")
    if len(set(parts)) != len(parts):
        return unsure("a repeated key part")
    return ok(value)


GOOD_ORIGINS = ("https://app.example.com", "https://admin.example.com",
                "https://*.example.com", "http://localhost:*", "http://127.0.0.1:3000")
GOOD_REQUEST_HEADERS = ("X-Token", "X-Request-Id", "Content-Type", "Authorization", "X-Tenant")
GOOD_SET = {"X-Frame-Options": ("DENY", "SAMEORIGIN"),
            "Referrer-Policy": ("no-referrer", "strict-origin-when-cross-origin"),
            "Cross-Origin-Opener-Policy": ("same-origin",)}
GOOD_SET_IF_MISSING = {"X-Content-Type-Options": ("nosniff",),
                       "Permissions-Policy": ("camera=()", "geolocation=()"),
                       "Cross-Origin-Resource-Policy": ("same-origin",)}
GOOD_REMOVE = ("Server", "X-Powered-By", "Via", "X-AspNet-Version")


def ref_list_of(good: Iterable[str], *, empty: str = VALID) -> Callable[[Any], Result]:
    """A list of strings; the documented rules for their content are not modelled beyond a few
    values known to be good."""
    good = frozenset(good)

    def check(value: Any) -> Result:
        if type(value) is not list:
            return bad("a list")
        if not value and empty != VALID:
            return empty, "an empty list"
        for item in value:
            if type(item) is not str:
                return bad(f"{item!r} is not a string")
        if not set(value) <= good:
            return unsure("list content not modelled here")
        return ok(value)
    return check


def ref_cors_methods(value: Any) -> Result:
    state, detail = ref_methods(value)
    if state == VALID and set(detail) & {"CONNECT", "TRACE", "TRACK"}:
        return bad("CONNECT, TRACE and TRACK are refused")
    return state, detail


def ref_header_map(good: dict[str, tuple[str, ...]]) -> Callable[[Any], Result]:
    def check(value: Any) -> Result:
        if type(value) is not dict:
            return bad("a mapping name -> value")
        for name, text in value.items():
            if type(name) is not str or type(text) not in (str, int):
                return bad(f"{name!r}: {text!r} is not a header name and value")
        if not all(type(t) is str and t in good.get(n, ()) for n, t in value.items()):
            return unsure("header values not modelled here")
        return ok(value)
    return check


def ref_csp_path(value: Any) -> Result:
    if type(value) is not str:
        return bad(f"{value!r} is not a path")
    if not value.startswith("/"):
        return bad("a path starts with '/'")
    return ok(value) if re.fullmatch(r"/[A-Za-z0-9._~/-]*", value) else unsure("a path not "
                                                                              "modelled here")


# The key tables of docs/policy.md, by section.
TOP = ("version", "extends", "environment", "server", "upstream", "redis", "rate_limits", "cors",
       "csp_reports", "observability", "headers", "routes")
SERVER = ("listen", "admin_listen", "workers", "trusted_proxies", "watch", "watch_interval",
          "timeouts", "limits")
SERVER_TIMEOUTS = ("header", "idle", "body", "shutdown")
SERVER_LIMITS = ("max_body_size", "max_header_size", "max_headers")
UPSTREAM = ("url", "targets", "timeouts", "max_connections", "retries", "preserve_host")
UPSTREAM_TIMEOUTS = ("connect", "read")
REDIS = ("url", "timeout", "failure_mode", "key_prefix", "fallback")
RATE_LIMIT = ("limit", "per", "key", "algorithm", "burst", "mode")
CORS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "allow_credentials",
        "max_age", "dangerously_allow_public_suffix_wildcard",
        "dangerously_allow_insecure_origins")
HEADERS = ("set", "set_if_missing", "remove")
CSP_REPORTS = ("path", "max_size", "rate_limits")
ROUTE = ("name", "match", "websocket", "rate_limits", "cors", "headers")
MATCH = ("path", "path_prefix", "methods", "host")
OBSERVABILITY = ("access_log", "sentry")
ACCESS_LOG = ("enabled", "format", "exclude_routes")
SENTRY = ("dsn", "traces_sample_rate", "profiles_sample_rate")


class Reference:
    """One document against docs/policy.md; `invalid` and `unspecified` collect reasons."""

    def __init__(self, doc: Any, environ: dict[str, str] | None = None) -> None:
        self.environ = environ or {}
        self.invalid: list[str] = []
        self.unspecified: list[str] = []
        self.document(doc)

    @property
    def verdict(self) -> str:
        return INVALID if self.invalid else UNSPECIFIED if self.unspecified else VALID

    def __repr__(self) -> str:
        return f"Reference({self.verdict}: {self.invalid or self.unspecified})"

    def no(self, where: str, why: str) -> None:
        self.invalid.append(f"{where}: {why}")

    def unsure(self, where: str, why: str) -> None:
        self.unspecified.append(f"{where}: {why}")

    def take(self, where: str, result: Result) -> Any:
        """The parsed value when valid, else None (with the reason recorded)."""
        state, detail = result
        if state == VALID:
            return detail
        (self.no if state == INVALID else self.unsure)(where, detail)
        return None

    def mapping(self, value: Any, known: tuple[str, ...], where: str) -> dict[str, Any] | None:
        if type(value) is not dict:
            self.no(where, "must be a mapping")
            return None
        for key in value:
            if key not in known:
                self.no(where, f"unknown key {key!r}")
        return value

    def keys(self, m: dict[str, Any], where: str,
             checks: dict[str, Callable[[Any], Result]]) -> dict[str, Any]:
        return {k: self.take(f"{where}.{k}", check(m[k])) for k, check in checks.items() if k in m}

    def interpolation(self, value: Any, where: str) -> None:
        """`${NAME}` with NAME unset or empty is an error; nothing else about it is modelled."""
        if isinstance(value, dict):
            for key, item in value.items():
                self.interpolation(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.interpolation(item, f"{where}[{i}]")
        elif isinstance(value, str) and "$" in value:
            names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
            if "$$" not in value and any(not self.environ.get(n) for n in names):
                self.no(where, "${NAME} with NAME unset")
            else:
                self.unsure(where, "interpolation")

    def document(self, doc: Any) -> None:
        self.interpolation(doc, "")
        top = self.mapping(doc, TOP, "the policy")
        if top is None:
            return
        if "extends" in top:
            self.unsure("extends", "not modelled here")
        if "version" not in top:
            self.no("version", "required")
        self.keys(top, "", {"version": ref_version, "environment": ref_nonempty_string})
        if "server" in top:
            self.server(top["server"])
        if "upstream" not in top:
            self.no("upstream", "required")
        else:
            self.upstream(top["upstream"])
        if "redis" in top and (m := self.mapping(top["redis"], REDIS, "redis")) is not None:
            self.keys(m, "redis", {"url": ref_redis_url, "timeout": ref_duration,
                                   "failure_mode": ref_choice("open", "closed"),
                                   "key_prefix": ref_key_prefix,
                                   "fallback": ref_choice("divide", "full")})
        limits = self.rate_limits(top["rate_limits"]) if "rate_limits" in top else set()
        cors = self.cors(top["cors"]) if "cors" in top else set()
        headers = self.headers(top["headers"]) if "headers" in top else set()
        if "csp_reports" in top:
            m = self.mapping(top["csp_reports"], CSP_REPORTS, "csp_reports")
            if m is not None:
                if "path" not in m:
                    self.no("csp_reports.path", "required")
                self.keys(m, "csp_reports", {"path": ref_csp_path, "max_size": ref_size})
                if "rate_limits" in m:
                    self.references(m["rate_limits"], limits, "csp_reports.rate_limits")
        if "observability" in top:
            self.observability(top["observability"])
        if "routes" not in top:
            self.no("routes", "required")
        else:
            self.routes(top["routes"], limits, cors, headers)
        self.workers_and_counters(top)

    def workers_and_counters(self, top: dict[str, Any]) -> None:
        """docs/policy.md, server.workers: more than one with rate limits needs redis.url."""
        server = top.get("server")
        workers = server.get("workers") if type(server) is dict else None
        redis = top.get("redis")
        url = redis.get("url", "") if type(redis) is dict else ""
        routes = top.get("routes") if type(top.get("routes")) is list else []
        csp = top.get("csp_reports")
        counted = any(type(r) is dict and r.get("rate_limits") for r in routes) or (
            type(csp) is dict and bool(csp.get("rate_limits")))
        if type(workers) is int and workers > 1 and url in ("", None) and counted:
            self.no("server.workers", "more than one worker with rate limits needs redis.url")

    def observability(self, value: Any) -> None:
        m = self.mapping(value, OBSERVABILITY, "observability")
        if m is None:
            return
        where = "observability.access_log"
        if "access_log" in m and (a := self.mapping(m["access_log"], ACCESS_LOG, where)):
            self.keys(a, where, {"enabled": ref_boolean, "format": ref_choice("json", "text"),
                                 "exclude_routes": ref_route_names})
        where = "observability.sentry"
        if "sentry" in m and (t := self.mapping(m["sentry"], SENTRY, where)):
            self.keys(t, where, {"dsn": ref_dsn, "traces_sample_rate": ref_rate,
                                 "profiles_sample_rate": ref_rate})

    def server(self, value: Any) -> None:
        m = self.mapping(value, SERVER, "server")
        if m is None:
            return
        got = self.keys(m, "server", {
            "listen": ref_address, "admin_listen": ref_address,
            "workers": lambda v: ref_integer(v, 1, 256), "trusted_proxies": ref_networks,
            "watch": ref_boolean, "watch_interval": ref_duration})
        listen = got.get("listen", ("0.0.0.0", 8080, ipaddress.ip_address("0.0.0.0")))
        admin = got.get("admin_listen", ("127.0.0.1", 9090, ipaddress.ip_address("127.0.0.1")))
        if listen and admin and listen[1] == admin[1] and (
                listen[2] == admin[2] or listen[2].is_unspecified or admin[2].is_unspecified):
            self.no("server.admin_listen", "must not share listen's port (one address or a "
                    "wildcard)")
        if "timeouts" in m and (t := self.mapping(m["timeouts"], SERVER_TIMEOUTS,
                                                  "server.timeouts")) is not None:
            self.keys(t, "server.timeouts", dict.fromkeys(SERVER_TIMEOUTS, ref_duration))
        if "limits" in m and (lm := self.mapping(m["limits"], SERVER_LIMITS,
                                                 "server.limits")) is not None:
            self.keys(lm, "server.limits", {"max_body_size": ref_size, "max_header_size": ref_size,
                                            "max_headers": lambda v: ref_integer(v, 1, 1000)})

    def upstream(self, value: Any) -> None:
        m = self.mapping(value, UPSTREAM, "upstream")
        if m is None:
            return
        if ("url" in m) == ("targets" in m):
            self.no("upstream", "one of url or targets")
        self.keys(m, "upstream", {
            "url": ref_url, "targets": ref_targets,
            "max_connections": lambda v: ref_integer(v, 1, 100_000),
            "retries": lambda v: ref_integer(v, 0, 10), "preserve_host": ref_boolean})
        if "timeouts" in m and (t := self.mapping(m["timeouts"], UPSTREAM_TIMEOUTS,
                                                  "upstream.timeouts")) is not None:
            self.keys(t, "upstream.timeouts", dict.fromkeys(UPSTREAM_TIMEOUTS, ref_duration))

    def rate_limits(self, value: Any) -> set[str]:
        if type(value) is not dict:
            self.no("rate_limits", "a mapping of names")
            return set()
        for name, item in value.items():
            where = f"rate_limits.{name}"
            if type(name) is not str or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                self.unsure(where, "rate limit names are not specified")
            m = self.mapping(item, RATE_LIMIT, where)
            if m is None:
                continue
            for required in ("limit", "per"):
                if required not in m:
                    self.no(f"{where}.{required}", "required")
            self.keys(m, where, {
                "limit": lambda v: ref_integer(v, 1, 10**9), "per": ref_per,
                "key": ref_limit_key,
                "algorithm": ref_choice("sliding_window", "fixed_window", "token_bucket"),
                "burst": lambda v: ref_integer(v, 1, 10**9),
                "mode": ref_choice("enforce", "shadow")})
            if "burst" in m and m.get("algorithm", "sliding_window") != "token_bucket":
                self.no(f"{where}.burst", "only with token_bucket")
        return set(value)

    def cors(self, value: Any) -> set[str]:
        if type(value) is not dict:
            self.no("cors", "a mapping of names")
            return set()
        for name, item in value.items():
            where = f"cors.{name}"
            m = self.mapping(item, CORS, where)
            if m is None:
                continue
            if "allow_origins" not in m:
                self.no(f"{where}.allow_origins", "required")
            got = self.keys(m, where, {
                "allow_credentials": ref_boolean, "max_age": ref_max_age,
                "dangerously_allow_public_suffix_wildcard": ref_boolean,
                "dangerously_allow_insecure_origins": ref_boolean,
                "allow_methods": ref_cors_methods,
                "allow_headers": ref_list_of(GOOD_REQUEST_HEADERS),
                "expose_headers": ref_list_of(GOOD_REQUEST_HEADERS)})
            origins = m.get("allow_origins")
            if got.get("allow_credentials") and type(origins) is list and "*" in origins:
                self.no(f"{where}.allow_origins", "'*' with credentials")
            if "allow_origins" in m:
                self.take(f"{where}.allow_origins",
                          ref_list_of(GOOD_ORIGINS, empty=UNSPECIFIED)(origins))
        return set(value)

    def headers(self, value: Any) -> set[str]:
        if type(value) is not dict:
            self.no("headers", "a mapping of names")
            return set()
        for name, item in value.items():
            where = f"headers.{name}"
            m = self.mapping(item, HEADERS, where)
            if m is None:
                continue
            self.keys(m, where, {"set": ref_header_map(GOOD_SET),
                                 "set_if_missing": ref_header_map(GOOD_SET_IF_MISSING),
                                 "remove": ref_list_of(GOOD_REMOVE)})
            seen: list[str] = []
            for key in HEADERS:
                if type(m.get(key)) in (dict, list):
                    seen.extend({n.lower() for n in m[key] if type(n) is str})
            if len(seen) != len(set(seen)):
                self.no(where, "a name in only one of the three lists")
        return set(value)

    def references(self, value: Any, defined: set[str], where: str) -> None:
        if type(value) is not list:
            self.no(where, "a list of names")
            return
        for item in value:
            if type(item) is not str or item not in defined:
                self.no(where, f"{item!r} is not a defined rate limit")
        if len(set(map(repr, value))) != len(value):
            self.unsure(where, "a name listed twice")

    def routes(self, value: Any, limits: set[str], cors: set[str], headers: set[str]) -> None:
        if type(value) is not list:
            self.no("routes", "must be a list")
            return
        if not value:
            self.no("routes", "at least one route")
        names: set[str] = set()
        for i, item in enumerate(value):
            where = f"routes[{i}]"
            m = self.mapping(item, ROUTE, where)
            if m is None:
                continue
            if "name" not in m:
                self.no(f"{where}.name", "required")
            got = self.keys(m, where, {"name": ref_route_name, "websocket": ref_boolean})
            if got.get("name") is not None:
                if got["name"] in names:
                    self.no(f"{where}.name", "route names are unique")
                names.add(got["name"])
            if "match" in m and (match := self.mapping(m["match"], MATCH,
                                                       f"{where}.match")) is not None:
                if "path" in match and "path_prefix" in match:
                    self.no(f"{where}.match", "path and path_prefix exclude each other")
                self.keys(match, f"{where}.match", {"path": ref_route_path,
                                                    "path_prefix": ref_route_path,
                                                    "methods": ref_methods, "host": ref_host})
            if "rate_limits" in m:
                self.references(m["rate_limits"], limits, f"{where}.rate_limits")
            for key, defined in (("cors", cors), ("headers", headers)):
                if key in m and (type(m[key]) is not str or m[key] not in {"none", *defined}):
                    self.no(f"{where}.{key}", "a defined policy name or none")


# =================================================================================================
# The known-valid document and its mutations
# =================================================================================================

BASE: dict[str, Any] = {
    "version": 1,
    "environment": "staging",
    "server": {
        "listen": "0.0.0.0:8080",
        "admin_listen": "127.0.0.1:9090",
        "workers": 2,
        "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
        "watch": False,
        "watch_interval": "2s",
        "timeouts": {"header": "5s", "idle": "1m", "body": "30s", "shutdown": "10s"},
        "limits": {"max_body_size": "1MiB", "max_header_size": "4KiB", "max_headers": 50},
    },
    "upstream": {
        "url": "http://127.0.0.1:8000",
        "timeouts": {"connect": "500ms", "read": "5s"},
        "max_connections": 64,
        "retries": 2,
        "preserve_host": False,
    },
    "redis": {"url": "redis://127.0.0.1:6379/0", "timeout": "100ms", "failure_mode": "open",
              "key_prefix": "gw:", "fallback": "divide"},
    "rate_limits": {
        "per_ip": {"limit": 10, "per": "1s", "key": "client_ip", "algorithm": "token_bucket",
                   "burst": 20, "mode": "enforce"},
        "login": {"limit": 5, "per": "15m", "algorithm": "fixed_window"},
    },
    "cors": {"default": {
        "allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["X-Token"], "expose_headers": ["X-Request-Id"],
        "allow_credentials": True, "max_age": "10m",
        "dangerously_allow_public_suffix_wildcard": False,
        "dangerously_allow_insecure_origins": False}},
    "headers": {"default": {"set": {"X-Frame-Options": "DENY"},
                            "set_if_missing": {"X-Content-Type-Options": "nosniff"},
                            "remove": ["Server"]}},
    "csp_reports": {"path": "/_gateway/csp-report", "max_size": "16KiB",
                    "rate_limits": ["per_ip"]},
    "observability": {
        "access_log": {"enabled": True, "format": "json", "exclude_routes": ["health"]},
        "sentry": {"dsn": "", "traces_sample_rate": 0.1, "profiles_sample_rate": 0.0}},
    "routes": [
        {"name": "login", "match": {"path": "/api/auth/login", "methods": ["POST"]},
         "rate_limits": ["login"], "cors": "none", "headers": "default"},
        {"name": "api", "match": {"path_prefix": "/api/", "host": "*.example.com"},
         "websocket": True, "rate_limits": ["per_ip"]},
        {"name": "everything", "match": {"path_prefix": "/"}},
    ],
}

Path_ = tuple[str | int, ...]


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def get_at(doc: Any, path: Path_) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def set_at(doc: Any, path: Path_, value: Any) -> None:
    get_at(doc, path[:-1])[path[-1]] = value


def del_at(doc: Any, path: Path_) -> None:
    del get_at(doc, path[:-1])[path[-1]]


def _route(i: int) -> Callable[[Policy], Any]:
    return lambda p: p.routes[i]


# Every leaf of BASE: (kind of value, what the loaded Policy holds for it, or None when the
# Policy keeps it in a form not compared here).
LEAVES: dict[Path_, tuple[str, Callable[[Policy], Any] | None]] = {
    ("version",): ("version", lambda p: p.version),
    ("environment",): ("string", lambda p: p.environment),
    ("server", "listen"): ("address", lambda p: (p.server.listen.host, p.server.listen.port)),
    ("server", "admin_listen"): ("address", lambda p: (p.server.admin_listen.host,
                                                       p.server.admin_listen.port)),
    ("server", "workers"): ("workers", lambda p: p.server.workers),
    ("server", "trusted_proxies"): ("networks", lambda p: list(p.server.trusted_proxies)),
    ("server", "watch"): ("boolean", lambda p: p.server.watch),
    ("server", "watch_interval"): ("duration", lambda p: p.server.watch_interval),
    ("server", "timeouts", "header"): ("duration", lambda p: p.server.timeouts.header),
    ("server", "timeouts", "idle"): ("duration", lambda p: p.server.timeouts.idle),
    ("server", "timeouts", "body"): ("duration", lambda p: p.server.timeouts.body),
    ("server", "timeouts", "shutdown"): ("duration", lambda p: p.server.timeouts.shutdown),
    ("server", "limits", "max_body_size"): ("size", lambda p: p.server.limits.max_body_size),
    ("server", "limits", "max_header_size"): ("size", lambda p: p.server.limits.max_header_size),
    ("server", "limits", "max_headers"): ("max_headers", lambda p: p.server.limits.max_headers),
    ("upstream", "url"): ("url", lambda p: [(t.scheme, t.host, t.port)
                                            for t in p.upstream.targets]),
    ("upstream", "timeouts", "connect"): ("duration", lambda p: p.upstream.connect_timeout),
    ("upstream", "timeouts", "read"): ("duration", lambda p: p.upstream.read_timeout),
    ("upstream", "max_connections"): ("max_connections", lambda p: p.upstream.max_connections),
    ("upstream", "retries"): ("retries", lambda p: p.upstream.retries),
    ("upstream", "preserve_host"): ("boolean", lambda p: p.upstream.preserve_host),
    ("redis", "url"): ("redis_url", lambda p: p.redis.url),
    ("redis", "timeout"): ("duration", lambda p: p.redis.timeout),
    ("redis", "failure_mode"): ("failure_mode", lambda p: p.redis.failure_mode),
    ("redis", "key_prefix"): ("key_prefix", lambda p: p.redis.key_prefix),
    ("redis", "fallback"): ("fallback", lambda p: p.redis.fallback),
    ("rate_limits", "per_ip", "limit"): ("limit", lambda p: p.rate_limits["per_ip"].limit),
    ("rate_limits", "per_ip", "per"): ("per", lambda p: p.rate_limits["per_ip"].period_ms / 1000),
    ("rate_limits", "per_ip", "key"): ("limit_key", None),
    ("rate_limits", "per_ip", "burst"): ("burst", lambda p: p.rate_limits["per_ip"].burst),
    ("rate_limits", "per_ip", "mode"): ("mode", lambda p: p.rate_limits["per_ip"].mode),
    ("rate_limits", "login", "algorithm"): ("algorithm",
                                            lambda p: p.rate_limits["login"].algorithm),
    ("cors", "default", "allow_origins"): ("origins", None),
    ("cors", "default", "allow_methods"): ("cors_methods", None),
    ("cors", "default", "allow_headers"): ("request_headers", None),
    ("cors", "default", "expose_headers"): ("request_headers", None),
    ("cors", "default", "allow_credentials"): ("boolean",
                                               lambda p: p.cors["default"].allow_credentials),
    ("cors", "default", "max_age"): ("max_age", lambda p: p.cors["default"].max_age),
    ("cors", "default", "dangerously_allow_public_suffix_wildcard"): ("boolean", None),
    ("cors", "default", "dangerously_allow_insecure_origins"): ("boolean", None),
    ("headers", "default", "set"): ("header_set", None),
    ("headers", "default", "set_if_missing"): ("header_set_if_missing", None),
    ("headers", "default", "remove"): ("header_remove", None),
    ("csp_reports", "path"): ("csp_path", lambda p: p.csp_reports.path),
    ("csp_reports", "max_size"): ("size", lambda p: p.csp_reports.max_size),
    ("csp_reports", "rate_limits"): ("limit_refs", lambda p: list(p.csp_reports.rate_limits)),
    ("observability", "access_log", "enabled"): (
        "boolean", lambda p: p.observability.access_log.enabled),
    ("observability", "access_log", "format"): (
        "log_format", lambda p: p.observability.access_log.format),
    ("observability", "access_log", "exclude_routes"): (
        "route_names", lambda p: p.observability.access_log.exclude_routes),
    ("observability", "sentry", "dsn"): ("dsn", lambda p: p.observability.sentry.dsn),
    ("observability", "sentry", "traces_sample_rate"): (
        "rate", lambda p: p.observability.sentry.traces_sample_rate),
    ("observability", "sentry", "profiles_sample_rate"): (
        "rate", lambda p: p.observability.sentry.profiles_sample_rate),
    ("routes", 0, "name"): ("route_name", lambda p: p.routes[0].name),
    ("routes", 0, "match", "path"): ("route_path", lambda p: p.routes[0].match.path),
    ("routes", 0, "match", "methods"): ("methods", lambda p: p.routes[0].match.methods),
    ("routes", 0, "rate_limits"): ("limit_refs", lambda p: list(p.routes[0].rate_limits)),
    ("routes", 0, "cors"): ("cors_ref", lambda p: p.routes[0].cors),
    ("routes", 0, "headers"): ("headers_ref", lambda p: p.routes[0].headers),
    ("routes", 1, "name"): ("route_name", lambda p: p.routes[1].name),
    ("routes", 1, "match", "path_prefix"): ("route_path", lambda p: p.routes[1].match.path_prefix),
    ("routes", 1, "match", "host"): ("host", lambda p: p.routes[1].match.host),
    ("routes", 1, "websocket"): ("boolean", lambda p: p.routes[1].websocket),
    ("routes", 2, "name"): ("route_name", lambda p: p.routes[2].name),
    ("routes", 2, "match", "path_prefix"): ("route_path", lambda p: p.routes[2].match.path_prefix),
}

# Mappings with a fixed set of keys (the documented ones), and where they are in BASE.
FIXED_MAPPINGS: dict[Path_, tuple[str, ...]] = {
    (): TOP, ("server",): SERVER, ("server", "timeouts"): SERVER_TIMEOUTS,
    ("server", "limits"): SERVER_LIMITS, ("upstream",): UPSTREAM,
    ("upstream", "timeouts"): UPSTREAM_TIMEOUTS, ("redis",): REDIS,
    ("rate_limits", "per_ip"): RATE_LIMIT, ("rate_limits", "login"): RATE_LIMIT,
    ("cors", "default"): CORS, ("headers", "default"): HEADERS, ("csp_reports",): CSP_REPORTS,
    ("observability",): OBSERVABILITY, ("observability", "access_log"): ACCESS_LOG,
    ("observability", "sentry"): SENTRY,
    **{("routes", i): ROUTE for i in range(3)},
    **{("routes", i, "match"): MATCH for i in range(3)},
}
REQUIRED: tuple[Path_, ...] = (
    ("version",), ("upstream",), ("routes",), ("routes", 0, "name"), ("routes", 1, "name"),
    ("routes", 2, "name"), ("upstream", "url"), ("rate_limits", "per_ip", "limit"),
    ("rate_limits", "per_ip", "per"), ("rate_limits", "login", "limit"),
    ("rate_limits", "login", "per"), ("cors", "default", "allow_origins"), ("csp_reports", "path"))
CONTAINERS: tuple[Path_, ...] = (
    ("server",), ("server", "timeouts"), ("server", "limits"), ("server", "trusted_proxies"),
    ("upstream",), ("upstream", "timeouts"), ("redis",), ("rate_limits",),
    ("rate_limits", "per_ip"), ("cors",), ("cors", "default"), ("cors", "default", "allow_origins"),
    ("headers",), ("headers", "default"), ("headers", "default", "set"), ("csp_reports",),
    ("routes",), ("routes", 0), ("routes", 0, "match"), ("routes", 0, "match", "methods"),
    ("routes", 1, "rate_limits"), ("observability",), ("observability", "access_log"),
    ("observability", "access_log", "exclude_routes"), ("observability", "sentry"))


# ---- value strategies ----------------------------------------------------------------------------

# No '$' (interpolation is exercised separately) and no lone surrogates (not writable as UTF-8).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="$"), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JUNK = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))


def junk_but(*types: type) -> st.SearchStrategy[Any]:
    return JUNK.filter(lambda v: type(v) not in types)


# Digits that are not ASCII: Arabic-Indic five, superscript two, fullwidth zero, Devanagari one,
# mathematical bold five, Arabic-Indic eighty.
ODD_NUMBERS = ("\u0665", "\u00b2", "\uff10", "\u0967", "\U0001d7d3", "\u0668\u0660")
NUMBER_TEXT = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(ODD_NUMBERS),
                        st.sampled_from(("1.5", "0.5", ".5", "1.", "-1", "+1", "1e3", "00", "01",
                                         "0x10", "1_000")))
UNITS = ("ms", "s", "m", "h", "d")


def render_seconds(seconds: int) -> st.SearchStrategy[str]:
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    hms = "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"
    return st.sampled_from((f"{seconds}s", f"{seconds * 1000}ms", hms))


VALID_DURATION = st.one_of(
    st.sampled_from(("250ms", "2h", "1h30m", "1d", "15m")),
    st.lists(st.tuples(st.integers(1, 100_000), st.sampled_from(UNITS)), min_size=1, max_size=3)
    .map(lambda parts: "".join(f"{n}{u}" for n, u in parts)))
BAD_DURATIONS = ("10", "-1s", "abc", "", "1S", "5 s", "1x", "s", "ms", "1h-30m", "1.5", "1e3s",
                 "0x10s", "one second", "1s,2s", "+1s", "1.s", ".5s", "1sm", "1h 30m")
TRICKY_DURATION = st.lists(st.tuples(NUMBER_TEXT, st.sampled_from(
    (*UNITS, "", "S", "M", "H", "D", "sec", "min", "us", "ns", "y", "w", "mS", "Ms"))),
    min_size=1, max_size=3).map(lambda parts: "".join(n + u for n, u in parts))

SIZE_UNITS = ("", "B", "KiB", "MiB", "GiB", "KB", "MB", "GB")
VALID_SIZE = st.one_of(
    st.integers(1, 10**12), st.sampled_from(("1KiB", "512", "10MiB", "1GB")),
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 10**6), st.sampled_from(SIZE_UNITS)))
BAD_SIZES = ("lots", "1.5MiB", "-1", "10mib", "1KiB1", "KiB", "1TB", "0x10", "1e3", "", "1kb",
             "1K", "8KIB", "1,000", -1, -1024)
TRICKY_SIZE = st.one_of(st.integers(-10, 10**15), st.builds(
    lambda n, u: n + u, NUMBER_TEXT, st.sampled_from(
        (*SIZE_UNITS, "kib", "KIB", "k", "K", "TiB", "TB", "b", "Kb", "iB", "kB"))))

VALID_ADDRESS = st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(
    ("0.0.0.0", "127.0.0.1", "10.1.2.3", "[::]", "[::1]", "[fd00::5]")), st.integers(1, 65535))
BAD_ADDRESSES = ("0.0.0.0", "8080", ":8080", "0.0.0.0:", "0.0.0.0:0x50", "0.0.0.0:65536",
                 "0.0.0.0:-1", "0.0.0.0:80a", "[::1]", "[::1]80", "[::1:80", "[zz]:80",
                 "0.0.0.0:8080:1", "0.0.0.0 :80", "*:80", "::1:8080", "0.0.0.0:\u00b2")
TRICKY_ADDRESS = st.builds(
    lambda h, p: f"{h}:{p}",
    st.sampled_from(("0.0.0.0", "127.0.0.1", "[::]", "[::1]", "::1", "::", "", "[127.0.0.1]",
                     "1.2.3.4", "[fe80::1]", "fe80::1", "[::ffff:1.2.3.4]", "*", "[]", "[::1")),
    st.one_of(st.integers(0, 70000).map(str), st.sampled_from(ODD_NUMBERS), st.sampled_from(
        ("80a", "0x50", "-1", "+80", "", "08080", " 80"))))


def _network(bits: int) -> st.SearchStrategy[str]:
    make = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    return st.builds(lambda a, n: str(make((a >> (bits - n) << (bits - n), n))),
                     st.integers(0, 2**bits - 1), st.integers(0, bits))


VALID_NETWORKS = st.lists(st.one_of(_network(32), _network(128)), max_size=4)
BAD_NETWORKS = ("10.0.0.1/8", "10.0.0.0/8, abc", "none, 10.0.0.0/8", {"a": "10.0.0.0/8"},
                None, 5, [None], [5], ["10.0.0.1/8"], ["10.0.0.0/33"], ["abc"], ["fd00::1/8"],
                ["10.0.0.0/-1"], ["10.0.0.0/"], [["10.0.0.0/8"]], ["/8"])
TRICKY_NETWORKS = st.lists(st.builds(
    lambda a, n: f"{a}/{n}",
    st.sampled_from(("10.0.0.0", "10.0.0.1", "192.168.1.0", "fd00::", "fd00::1", "::", "0.0.0.0",
                     "10.0.0", "010.0.0.0", "256.0.0.0", "::ffff:10.0.0.0")),
    st.one_of(st.integers(0, 130).map(str),
              st.sampled_from((*ODD_NUMBERS, "", "08", "-1", "+8", "8.0", " 8")))),
    min_size=1, max_size=3)

_NAME_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
VALID_URL = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}" + ("" if port is None else f":{port}"),
    st.sampled_from(("http", "https")),
    st.one_of(st.sampled_from(("127.0.0.1", "10.0.0.5", "example.com", "api.internal", "[::1]",
                               "[fd00::1]", "localhost", "Upstream.Example")),
              st.lists(_NAME_LABEL, min_size=1, max_size=3).map(".".join)),
    st.none() | st.integers(1, 65535))
BAD_URLS = ("ftp://x", "http://h/base", "127.0.0.1:8000", "http://", "http://u:p@h",
            "http://h?x=1", "http://h:99999", "//h", "h", "http://h#frag", "http://h:abc",
            "https://h/a/b", "http://exa mple.com", "http://h:+80", "http://h:\u0668\u0660",
            "http://%zz")
TRICKY_URL = st.builds(
    lambda scheme, user, host, port, rest: f"{scheme}://{user}{host}{port}{rest}",
    st.sampled_from(("http", "https", "ftp", "", "HTTP", "ws")),
    st.sampled_from(("", "", "", "user@", "u:p@", "@")),
    st.sampled_from(("127.0.0.1", "example.com", "[::1]", "::1", "", "a..b", "-a.com", "%zz",
                     "exa mple.com", "localhost", "10.0.0.5", "[zz]", "Example.COM", "a_b",
                     "256.0.0.1", "[127.0.0.1]", "xn--bcher-kva.example")),
    st.one_of(st.integers(0, 70000).map(lambda n: f":{n}"), st.sampled_from(
        ("", "", ":", ":-1", ":080", ":+80", ":8000:1", ":80a", *(f":{n}" for n in ODD_NUMBERS)))),
    st.sampled_from(("", "", "", "/", "/base", "?", "?q=1", "#", "#f", "/a#b", "/?")))

_SEGMENT = st.text(string.ascii_letters + string.digits + "-._~!&'()*+,;=:@", min_size=1,
                   max_size=8).filter(lambda s: s not in (".", "..")
                                      and not s.startswith((".;", "..;")))
VALID_ROUTE_PATH = st.builds(lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs
                                                                         else ""),
                             st.lists(_SEGMENT, max_size=4), st.booleans())
BAD_ROUTE_PATHS = ("/a/../b", "/a//b", "a/b", "", "/a/./b", "/a b", "/a#b", "/a?b", "/a\\b", "//",
                   "/..", "/.", "api", "/a/..", "/%zz", "/%2F", "/%7E")
TRICKY_ROUTE_PATH = st.builds(
    lambda lead, segs, trail: lead + "/".join(segs) + trail,
    st.sampled_from(("/", "/", "/", "", "//", "./")),
    st.lists(st.sampled_from(("a", "api", "v1", ".", "..", "", "%41", "%2F", "%2f", "%zz", "%20",
                              "%7e", "%7E", "~u", "a b", "\u00e9", "a;b", "..;x", ".;x", "a?b",
                              "a#b", "a\\b", "*", "@:", "a.b", ".well-known", "...", "%25",
                              "%2541", "%00", "A-Z_", "%C3%A9", "%c3%a9", "%3B")), max_size=4),
    st.sampled_from(("", "", "/")))


@st.composite
def non_normalized_path(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(("a", "b", "api", "v1")), max_size=3))
    pos = draw(st.integers(0, len(segs)))
    flaw = draw(st.sampled_from(("..", ".", "//", "no leading slash")))
    if flaw in ("..", "."):
        segs.insert(pos, flaw)
        path = "/" + "/".join(segs)
    elif flaw == "//":
        path = "/" + "/".join(segs[:pos]) + "//" + "/".join(segs[pos:])
    else:
        path = "/".join(segs) or "a"
    return path + draw(st.sampled_from(("", "/")))


VALID_METHODS = st.lists(st.one_of(
    st.sampled_from(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE")),
    st.from_regex(r"[A-Z][A-Z0-9_-]{0,9}", fullmatch=True)), min_size=1, max_size=4)
BAD_METHODS = ("GET", {"GET": 1}, None, [None], ["get"], ["Get"], [""], ["G ET"], [1],
               [["GET"]], ["GET "], ["POST", "put"])
TRICKY_METHODS = st.lists(st.sampled_from(
    ("GET", "POST", "HEAD", "PATCH", "PURGE", "M-SEARCH", "get", "Get", "", "G ET", "G\u00c9T",
     "GET1", "1GET", "_X", "X_Y", "CONNECT", "GET!", "\u01c5", "\uff27\uff25\uff34", "A",
     "GET\n", "\u0130")), min_size=1, max_size=3)

VALID_HOST = st.builds(
    lambda wild, labels: ("*." if wild else "") + ".".join(labels), st.booleans(),
    st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1,
             max_size=4)).filter(lambda h: not re.fullmatch(r"[0-9.]+", h.removeprefix("*.")))
BAD_HOSTS = ("Example.com", "example.com:8080", "*", "a..b", "-a.com", "*.", "a_b.com",
             "exa mple.com", "*.*.example.com", "*example.com", "", "a-.com", ".example.com",
             "example.com/x")
TRICKY_HOST = st.builds(
    lambda prefix, labels, suffix: prefix + ".".join(labels) + suffix,
    st.sampled_from(("", "", "*.", "*", "*.*.", ".")),
    st.lists(st.sampled_from(("example", "com", "a", "xn--bcher-kva", "b\u00fccher", "EXAMPLE",
                              "a-b", "-a", "a-", "a_b", "", "0", "123", "a" * 64, "K\u212a")),
             min_size=1, max_size=3),
    st.sampled_from(("", "", "", ".", ":8080", " ")))

VALID_ROUTE_NAME = st.builds(
    lambda first, rest: first + rest, st.sampled_from(string.ascii_letters + string.digits),
    st.text(string.ascii_letters + string.digits + "-_.", max_size=62))
BAD_ROUTE_NAMES = ("", "a b", "a/b", "a:b", "a*", "x\ny", None, 5, ["a"], {"a": 1}, True, 1.5,
                   "-a", "_a", ".", "a" * 64)
TRICKY_ROUTE_NAME = st.text(string.ascii_letters + string.digits + "-_. /:*\u00e9\u0665",
                            max_size=80)

BAD_CHOICES = ("OPEN", "", "Open", "none", "sliding-window", None, 1, True, ["open"],
               {"open": True})


@dataclass(frozen=True)
class Kind:
    """One documented type: the reference's check, and values to try. `listed` are hand-picked
    invalid values (each one is tried at every leaf of the kind); `invalid` draws from them and
    from wrong types and out-of-range numbers."""

    check: Callable[[Any], Result]
    valid: st.SearchStrategy[Any]
    invalid: st.SearchStrategy[Any]
    listed: tuple[Any, ...] = ()
    tricky: st.SearchStrategy[Any] | None = None
    loaded: Callable[[Any], Any] = lambda parsed: parsed  # reference value -> Policy value


def kind(check: Callable[[Any], Result], valid: st.SearchStrategy[Any],
         listed: Iterable[Any] = (), *others: st.SearchStrategy[Any],
         tricky: st.SearchStrategy[Any] | None = None,
         loaded: Callable[[Any], Any] = lambda parsed: parsed) -> Kind:
    listed = tuple(listed)
    strategies = [*others, *([st.sampled_from(listed)] if listed else [])]
    return Kind(check, valid, st.one_of(strategies), listed, tricky, loaded)


def picked(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


def integer_kind(lo: int, hi: int | None = None) -> Kind:
    listed = (lo - 1, *(() if hi is None else (hi + 1,)), None, "5", 5.0, True, [5], {"n": 5})
    out_of_range = [st.integers(max_value=lo - 1)]
    if hi is not None:
        out_of_range.append(st.integers(min_value=hi + 1))
    return kind(lambda v: ref_integer(v, lo, hi),
                st.integers(lo, hi) if hi is not None else st.integers(min_value=lo),
                listed, junk_but(int), *out_of_range)


NOT_A_LIST = (None, "x", 5, True, {"a": 1})
NOT_A_NAME = (None, 5, True, ["default"], {"a": 1}, "undefined", "Default")

KINDS: dict[str, Kind] = {
    "version": kind(ref_version, st.just(1), (None, "1", 1.0, True, [1], {"v": 1}, 0, 2),
                    st.integers().filter(lambda n: n != 1)),
    "string": kind(ref_nonempty_string, st.text(st.characters(exclude_categories=("Cs",),
                                                              exclude_characters="$"),
                                                min_size=1, max_size=30),
                   ("", None, 5, True, ["x"], {"a": 1}), junk_but(str)),
    "workers": integer_kind(1, 256),
    "max_headers": integer_kind(1, 1000),
    "retries": integer_kind(0, 10),
    "max_connections": integer_kind(1, 100_000),
    "limit": integer_kind(1, 10**9),
    "burst": integer_kind(1, 10**9),
    "boolean": kind(ref_boolean, st.booleans(),
                    ("true", "yes", "on", "1", 1, 0, None, [True], {"a": True}), junk_but(bool)),
    "duration": kind(ref_duration, VALID_DURATION, BAD_DURATIONS, junk_but(str),
                     tricky=TRICKY_DURATION, loaded=float),
    "per": kind(ref_per, VALID_DURATION, (*BAD_DURATIONS, "0s", "0ms", "0h"), junk_but(str),
                tricky=TRICKY_DURATION, loaded=float),
    "max_age": kind(ref_max_age, st.integers(0, 86400).flatmap(render_seconds),
                    (*BAD_DURATIONS, "25h", "1d1s", "86401s"), junk_but(str),
                    tricky=TRICKY_DURATION, loaded=int),
    "size": kind(ref_size, VALID_SIZE, BAD_SIZES, junk_but(str, int), tricky=TRICKY_SIZE),
    "address": kind(ref_address, VALID_ADDRESS, BAD_ADDRESSES, junk_but(str),
                    tricky=TRICKY_ADDRESS, loaded=lambda parsed: parsed[:2]),
    "networks": kind(ref_networks, VALID_NETWORKS, BAD_NETWORKS, tricky=TRICKY_NETWORKS),
    "url": kind(ref_url, VALID_URL, BAD_URLS, junk_but(str), tricky=TRICKY_URL,
                loaded=lambda parsed: [parsed]),
    "route_name": kind(ref_route_name, VALID_ROUTE_NAME, BAD_ROUTE_NAMES,
                       tricky=TRICKY_ROUTE_NAME),
    "route_path": kind(ref_route_path, VALID_ROUTE_PATH, BAD_ROUTE_PATHS, junk_but(str),
                       non_normalized_path(), tricky=TRICKY_ROUTE_PATH),
    "methods": kind(ref_methods, VALID_METHODS, BAD_METHODS, tricky=TRICKY_METHODS,
                    loaded=lambda parsed: frozenset(parsed) | ({"HEAD"} if "GET" in parsed
                                                               else set())),
    "host": kind(ref_host, VALID_HOST, BAD_HOSTS, junk_but(str), tricky=TRICKY_HOST),
    "limit_refs": kind(ok, picked([], ["per_ip"], ["per_ip", "login"]),
                       ("per_ip", {"per_ip": 1}, None, ["undefined"], [5], [None],
                        [["per_ip"]])),
    "cors_ref": kind(ok, picked("none", "default"), NOT_A_NAME,
                     loaded=lambda parsed: None if parsed == "none" else parsed),
    "headers_ref": kind(ok, picked("none", "default"), NOT_A_NAME,
                        loaded=lambda parsed: None if parsed == "none" else parsed),
    "redis_url": kind(ref_redis_url, picked(
        None, "", "redis://cache:6379/0", "rediss://10.0.0.1:6380", "unix:///var/run/redis.sock",
        "redis+cluster://node1:7000", "redis+sentinel://s1:26379/mymaster"),
        (5, True, ["redis://h"], {"a": 1}, "http://h:6379", "localhost:6379", "redis:/h",
         "REDIS://h:6379")),
    "failure_mode": kind(ref_choice("open", "closed"), picked("open", "closed"), BAD_CHOICES),
    "fallback": kind(ref_choice("divide", "full"), picked("divide", "full"), BAD_CHOICES),
    "algorithm": kind(ref_choice("sliding_window", "fixed_window", "token_bucket"),
                      picked("sliding_window", "fixed_window", "token_bucket"), BAD_CHOICES),
    "mode": kind(ref_choice("enforce", "shadow"), picked("enforce", "shadow"), BAD_CHOICES),
    "key_prefix": kind(ref_key_prefix, TEXT.filter(lambda s: "{" not in s and "}" not in s),
                       ("{gw}", "gw{", "a}b", None, 5, ["gw:"]), junk_but(str)),
    "limit_key": kind(ref_limit_key, picked("client_ip", "global", "header:X-Tenant",
                                            "client_ip+header:X-Tenant"),
                      (None, 5, ["client_ip"], "ip", "header:", "global+client_ip",
                       "header:X Y", "")),
    "origins": kind(ref_list_of(GOOD_ORIGINS, empty=UNSPECIFIED),
                    st.lists(st.sampled_from(GOOD_ORIGINS), min_size=1, max_size=3),
                    (*NOT_A_LIST, [None], [5], [["x"]], ["*"])),
    "cors_methods": kind(ref_cors_methods, st.lists(st.sampled_from(
        ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")), min_size=1, max_size=4,
        unique=True), (*NOT_A_LIST, "GET", [None], ["get"], ["TRACE"], ["CONNECT"], ["TRACK"],
                       [1])),
    "request_headers": kind(ref_list_of(GOOD_REQUEST_HEADERS),
                            st.lists(st.sampled_from(GOOD_REQUEST_HEADERS), max_size=3,
                                     unique=True),
                            (*NOT_A_LIST, "X-Token", [None], [5])),
    "header_set": kind(ref_header_map(GOOD_SET), st.fixed_dictionaries(
        {}, optional={n: st.sampled_from(v) for n, v in GOOD_SET.items()}),
        (["X-Frame-Options"], "DENY", None, 5, {"X-Frame-Options": None},
         {"X-Frame-Options": ["DENY"]}, {"X-Frame-Options": True},
         {"X-Content-Type-Options": "nosniff"})),
    "header_set_if_missing": kind(ref_header_map(GOOD_SET_IF_MISSING), st.fixed_dictionaries(
        {}, optional={n: st.sampled_from(v) for n, v in GOOD_SET_IF_MISSING.items()}),
        (["X-Content-Type-Options"], "nosniff", None, 5, {"Permissions-Policy": None},
         {"X-Frame-Options": "DENY"})),
    "header_remove": kind(ref_list_of(GOOD_REMOVE), st.lists(st.sampled_from(GOOD_REMOVE),
                                                             max_size=3, unique=True),
                          (*NOT_A_LIST, "Server", [None], [5], ["X-Frame-Options"])),
    "log_format": kind(ref_choice("json", "text"), picked("json", "text"),
                       ("JSON", "", "logfmt", None, 1, True, ["json"])),
    "route_names": kind(ref_route_names, st.lists(VALID_ROUTE_NAME, max_size=3),
                        (*NOT_A_LIST, "health", [None], [5], ["a b"], [""], ["-x"]),
                        loaded=frozenset),
    "dsn": kind(ref_dsn, picked("", None, "https://abc123@o1.ingest.sentry.io/42",
                                "http://0f@localhost:9000/1"),
                (5, True, ["https://a@h/1"], {"a": 1}, "ftp://a@h/1", "sentry.io/1")),
    "rate": kind(ref_rate, st.one_of(st.floats(0, 1), st.sampled_from((0, 1))),
                 (-1, 2, 1.5, -0.1, math.inf, math.nan, None, "0.5", True, [0.5]),
                 junk_but(int, float), st.floats(min_value=1, exclude_min=True),
                 st.floats(max_value=0, exclude_max=True)),
    "csp_path": kind(ref_csp_path, st.lists(st.text(string.ascii_letters + "-_", min_size=1,
                                                    max_size=8), max_size=3)
                     .map(lambda segs: "/" + "/".join(segs)),
                     (None, 5, ["/x"], "csp", "x/y", "", {"a": 1})),
}
TRICKY_KINDS = [name for name, k in KINDS.items() if k.tricky is not None]


def leaves_of(kind: str) -> list[Path_]:
    return [path for path, (k, _) in LEAVES.items() if k == kind]


def _port(address: Any) -> str | None:
    return address.rpartition(":")[2] if isinstance(address, str) else None


def allowed_at(path: Path_, value: Any) -> bool:
    """False for a value that would break another rule at this leaf of BASE: a listener on the
    other's port, a repeated route name, no Redis for BASE's two workers with rate limits."""
    if path == ("server", "listen"):
        return _port(value) != _port(BASE["server"]["admin_listen"])
    if path == ("server", "admin_listen"):
        return _port(value) != _port(BASE["server"]["listen"])
    if path[0] == "routes" and path[-1] == "name":
        return value not in {r["name"] for i, r in enumerate(BASE["routes"]) if i != path[1]}
    if path == ("redis", "url"):
        return value not in ("", None)
    return True


def same(got: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return math.isclose(got, expected, rel_tol=1e-12)
    return bool(got == expected)


STRUCTURAL = ("unknown key", "missing key", "duplicate name", "route path", "conflict",
              "unset variable", "section")
MUTATIONS = [*(f"{kind} value" for kind in sorted(KINDS)), *STRUCTURAL]


@st.composite
def invalid_mutation(draw: st.DrawFn, how: str) -> tuple[str, dict[str, Any]]:
    """A mutation of BASE that docs/policy.md rules out (`how`: one of MUTATIONS), and what it
    was: a wrong, malformed or out-of-range value of one kind, or a structural change."""
    doc = base()
    if how.endswith(" value"):
        path = draw(st.sampled_from(leaves_of(how.removesuffix(" value"))))
        value = draw(KINDS[LEAVES[path][0]].invalid)
        set_at(doc, path, value)
        return f"{path} = {value!r}", doc
    if how == "unknown key":
        path = draw(st.sampled_from(list(FIXED_MAPPINGS)))
        known = FIXED_MAPPINGS[path]
        key = draw(st.one_of(st.sampled_from(("listne", "timeout", "Version", "url ", "methods_",
                                              "path-prefix", "observability", "extend", "")),
                             TEXT).filter(lambda k: k not in known))
        set_at(doc, (*path, key), draw(JUNK))
        return f"unknown key {key!r} in {path}", doc
    if how == "missing key":
        path = draw(st.sampled_from(REQUIRED))
        del_at(doc, path)
        return f"no {path}", doc
    if how == "duplicate name":
        i, j = draw(st.permutations(range(3)))[:2]
        doc["routes"][j]["name"] = doc["routes"][i]["name"]
        return f"routes[{j}] named like routes[{i}]", doc
    if how == "route path":
        path = draw(st.sampled_from(leaves_of("route_path")))
        value = draw(non_normalized_path())
        set_at(doc, path, value)
        return f"{path} = {value!r}", doc
    if how == "unset variable":
        path = draw(st.sampled_from(list(LEAVES)))
        value = draw(TEXT) + "${UNSET_VARIABLE}" + draw(TEXT)
        set_at(doc, path, value)
        return f"{path} = {value!r}", doc
    if how == "section":
        path = draw(st.sampled_from(CONTAINERS))
        if isinstance(get_at(doc, path), dict):
            value = draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3)))
        else:
            value = draw(st.one_of(SCALARS, st.dictionaries(TEXT, SCALARS, max_size=2)))
        set_at(doc, path, value)
        return f"{path} = {value!r}", doc
    conflicts: dict[str, Callable[[dict[str, Any]], None]] = {
        "url and targets": lambda d: d["upstream"].update(targets=["http://10.0.0.1:80"]),
        "neither url nor targets": lambda d: d["upstream"].pop("url"),
        "path and path_prefix": lambda d: d["routes"][0]["match"].update(path_prefix="/x"),
        "admin_listen = listen": lambda d: d["server"].update(admin_listen="0.0.0.0:8080"),
        "burst without token_bucket": lambda d: d["rate_limits"]["per_ip"].update(
            algorithm=draw(st.sampled_from(("sliding_window", "fixed_window")))),
        "no routes": lambda d: d.update(routes=[]),
        "undefined rate limit": lambda d: d["routes"][draw(st.integers(0, 2))].update(
            rate_limits=["nope"]),
        "undefined csp rate limit": lambda d: d["csp_reports"].update(rate_limits=["nope"]),
        "undefined cors": lambda d: d["routes"][draw(st.integers(0, 2))].update(cors="nope"),
        "undefined headers": lambda d: d["routes"][draw(st.integers(0, 2))].update(
            headers="nope"),
        "any origin with credentials": lambda d: d["cors"]["default"].update(
            allow_origins=["*"]),
        "header set and removed": lambda d: d["headers"]["default"].update(
            remove=["X-Frame-Options"]),
    }
    name = draw(st.sampled_from(sorted(conflicts)))
    conflicts[name](doc)
    return name, doc


# =================================================================================================
# 1. Random documents and random text: PolicyError or a Loaded, nothing else
# =================================================================================================

KEY_NAMES = sorted({key for keys in KEYS.values() for key in keys}
                   | {part for section in KEYS for part in re.split(r"[.\[\]*]+", section) if part}
                   | {"per_ip", "default", "none"})
FUZZ_STRINGS = (
    "${X}", "${X:-y}", "$${", "%", "${", "${X:-}", "${1}", "$${X}", "${UNSET}", "$", "${X}${Y}",
    "10", "-1s", "1s", "500ms", "8KiB", "0.0.0.0:8080", "[::1]:1", "http://127.0.0.1:8000",
    "/api/", "/a/../b", "GET", "*.example.com", "10.0.0.0/8", "yes", "~", "0b_", "0x_", "1:60",
    "!!int", "&a", "*a", "<<", "?", "- x", "a: b", "\t", "\n", "\x00", "\ufeff", "\U0001f600",
    "\u00e9", "\u2028", "default", "none", "token_bucket", "client_ip", "https://*.example.com",
    "DENY", *ODD_NUMBERS)
FUZZ_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.sampled_from(FUZZ_STRINGS), st.integers(1000, 20_000).map(lambda n: "x" * n))
FUZZ_KEYS = st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=8).filter(str.isprintable),
                      st.integers(), st.none(), st.booleans())
FUZZ_TREES = st.recursive(FUZZ_SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(FUZZ_KEYS, children, max_size=5)),
    max_leaves=25)
SNIPPETS = ("\t", "&a ", "*a", "!!python/object:os.system ", "!!python/object/apply:os.system ",
            "!custom ", "\n---\n", "---\n", "...\n", "? ", ": ", "- ", "[", "]", "{", "}", "#",
            "'", '"', "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "!!int ", "!!bool ", "!!str ",
            "!!null ", "!!float ", "!!binary ", "!!map ", "!!seq ", "<<: *a\n", "\ufeff", "\x00",
            "\r", "\r\n", "${X}", "\u2028", "\x85", "|\n", ">-\n", "  ", "\n  - ", "\n  k: ")


def _all_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths.extend(_all_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            paths.extend(_all_paths(value, (*prefix, i)))
    return paths


@st.composite
def mutated_base(draw: st.DrawFn) -> Any:
    """BASE with a few subtrees replaced, deleted or added at random."""
    doc: Any = base()
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_all_paths(doc)))
        action = draw(st.sampled_from(("replace", "delete", "insert")))
        if path == ():
            doc = draw(FUZZ_TREES) if action == "replace" else doc
        elif action == "replace":
            set_at(doc, path, draw(FUZZ_TREES))
        elif action == "delete":
            del_at(doc, path)
        elif isinstance(get_at(doc, path), dict):
            get_at(doc, path)[draw(FUZZ_KEYS)] = draw(FUZZ_TREES)
        if not isinstance(doc, (dict, list)):
            break
    return doc


RAW_SCALARS = st.builds(
    lambda anchor, tag, value: anchor + tag + value,
    st.sampled_from(("", "", "&a ")),
    st.one_of(st.sampled_from(("", "!!int ", "!!bool ")),
              st.sampled_from(("!!float ", "!!str ", "!!null ", "!!binary ", "!!timestamp ",
                               "!!python/object:os.system ", "!custom ", "!!map "))),
    st.one_of(st.sampled_from(("abc", "''", "maybe", "0b_", "0x_", "-0b_", "1", "yes", "*a",
                               "[*a]", "{k: *a}", "{}", "[]", "~", "${X}", "${X:-0x_}", "1:60",
                               "0o9", "1__0", ".inf", "2001-02-30", "'${X}'", "\"\\x00\"")),
              st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"),
                      max_size=10)))
_MARKER = "RAW-SCALAR-MARKER"


@st.composite
def random_documents(draw: st.DrawFn) -> str:
    """Random trees, BASE with random subtrees, or BASE with one leaf written as raw YAML (a
    tag, an anchor or alias, an odd plain scalar), then a few snippets spliced into the text."""
    raw = None
    how = draw(st.sampled_from(("tree", "mapping", "mutated", "raw leaf", "raw leaf")))
    if how == "tree":
        doc = draw(FUZZ_TREES)
    elif how == "mapping":
        doc = draw(st.dictionaries(FUZZ_KEYS, FUZZ_TREES, max_size=8))
    elif how == "mutated":
        doc = draw(mutated_base())
    else:
        doc = base()
        leaf = draw(st.one_of(st.sampled_from(list(LEAVES)), st.sampled_from(leaves_of("boolean")),
                              st.sampled_from(leaves_of("workers") + leaves_of("retries"))))
        set_at(doc, leaf, _MARKER)
        raw = draw(RAW_SCALARS)
    text = yaml.dump(doc, Dumper=yaml.CSafeDumper, sort_keys=False,
                     allow_unicode=draw(st.booleans()),
                     default_flow_style=draw(st.sampled_from((False, True, None))),
                     width=draw(st.sampled_from((80, 20, 10**6))))
    if raw is not None:
        text = text.replace(_MARKER, raw)
    for pos, snippet in draw(st.lists(st.tuples(st.integers(0, 10**6),
                                                st.sampled_from(SNIPPETS)), max_size=3)):
        at = pos % (len(text) + 1)
        text = text[:at] + snippet + text[at:]
    return text


TOKENS = (*SNIPPETS, "a", "b", ":", " ", "\n", "version", "1", "routes", "upstream", "url",
          "server", "listen", "name", "x", "- name: a", "0b_", "yes", "~", "${X}", "$${")
RANDOM_TEXT = st.one_of(
    st.text(),
    st.binary(max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=30).map("".join),
    st.builds(lambda key, anchor, tag, value: f"{key}: {anchor}{tag}{value}\n",
              st.sampled_from(("version", "server", "routes", "upstream", "a")),
              st.sampled_from(("", "&a ")),
              st.sampled_from(("", "!!int ", "!!bool ", "!!str ", "!!python/object ", "!custom ")),
              st.sampled_from(("1", "x", "*a", "[*a]", "{k: *a}", "\n  - *a", "\n  k: *a", "''",
                               "maybe", "[1, 2]"))),
    # deep nesting (bounded: PyYAML's scanner is quadratic in the depth of flow collections)
    st.builds(lambda n, brackets: f"version: {brackets[0] * n}{brackets[1] * n}\n",
              st.integers(1, 800), st.sampled_from(("[]", "{}"))),
)
ENVIRON = st.dictionaries(
    st.sampled_from(("X", "Y", "WORKERS", "A_1")),
    st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
              st.sampled_from(("", "0b_", "2", "1s", "[", "{a: 1}", "null", "*a", "!!int x"))),
    max_size=3)


def load_anything(data: str | bytes, environ: dict[str, str]) -> None:
    try:
        loaded = load(data, environ)
    except PolicyError as error:
        assert_well_formed(error)
    else:  # what loads is a whole policy, and its warnings are positioned like errors
        assert loaded.policy.routes, "a policy without routes loaded"
        for warning in loaded.warnings:
            assert warning.warning, f"an error among the warnings: {warning}"
            assert_positioned(warning)


@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES)
@given(text=random_documents(), environ=ENVIRON)
def test_random_documents_raise_only_policy_errors(text: str, environ: dict[str, str]) -> None:
    load_anything(text, environ)


@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES)
@given(data=RANDOM_TEXT, environ=ENVIRON)
def test_random_text_raises_only_policy_errors(data: str | bytes,
                                               environ: dict[str, str]) -> None:
    load_anything(data, environ)


# =================================================================================================
# 2. Mutations of a valid document, judged by the reference
# =================================================================================================

def test_the_base_document_is_valid_and_loads() -> None:
    assert Reference(BASE).verdict == VALID
    assert load(dump(BASE)).policy.environment == "staging"


@pytest.mark.parametrize("how", MUTATIONS)
@settings(max_examples=PER_KIND, deadline=None, phases=PHASES)
@given(data=st.data())
def test_invalid_mutations_are_rejected(how: str, data: st.DataObject) -> None:
    what, doc = data.draw(invalid_mutation(how), label="mutation")
    reference = Reference(doc)
    assert reference.verdict == INVALID, (what, reference)
    text = dump(doc)
    note(text)
    try:
        load(text)
    except PolicyError as error:
        assert_well_formed(error)
    else:
        pytest.fail(f"{what}: loaded, but the reference says {reference.invalid}")


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if KINDS[k].listed))
def test_every_listed_invalid_value_is_rejected(kind: str) -> None:
    """The deterministic companion of the mutations above: each hand-picked invalid value of a
    kind at each leaf of that kind; every disagreement and crash is listed."""
    wrong = []
    for path in leaves_of(kind):
        for value in KINDS[kind].listed:
            doc = base()
            set_at(doc, path, value)
            reference = Reference(doc)
            assert reference.verdict == INVALID, (path, value, reference)
            try:
                load(dump(doc))
            except PolicyError as error:
                assert_well_formed(error)
            except Exception as exc:
                wrong.append(f"{path} = {value!r}: {type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{path} = {value!r}: loaded, but {reference.invalid[0]}")
    assert not wrong, "\n".join(wrong)


RAW_VALUES = ("!!int abc", "!!int ''", "!!bool maybe", "!!float x", "!!timestamp 2001-02-30",
              "0b_", "-0x_", "&a [*a]", "!!python/object:os.system x", "${X}")


def test_raw_yaml_values_raise_only_policy_errors() -> None:
    """Each leaf of BASE written as raw YAML: explicit tags that do not parse, plain scalars that
    resolve to an int they are not, a recursive alias, a `${X}` that becomes one of those."""
    crashes = []
    for path in LEAVES:
        doc = base()
        set_at(doc, path, _MARKER)
        text = yaml.dump(doc, Dumper=yaml.CSafeDumper, sort_keys=False)
        for raw in RAW_VALUES:
            try:
                load(text.replace(_MARKER, raw), {"X": "0b_"})
            except PolicyError as error:
                assert_well_formed(error)
            except Exception as exc:
                crashes.append(f"{path}: {raw}: {type(exc).__name__}: {exc}")
    assert not crashes, "\n".join(crashes)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=PER_KIND, deadline=None, phases=PHASES)
@given(data=st.data())
def test_valid_mutations_load_what_was_written(kind: str, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(leaves_of(kind)), label="path")
    value = data.draw(KINDS[kind].valid.filter(lambda v: allowed_at(path, v)), label="value")
    doc = base()
    set_at(doc, path, value)
    reference = Reference(doc)
    assert reference.verdict == VALID, reference
    text = dump(doc)
    note(text)
    policy = load(text).policy
    check_loaded_value(policy, path, value)


def check_loaded_value(policy: Policy, path: Path_, value: Any) -> None:
    kind, getter = LEAVES[path]
    if getter is None:
        return
    state, parsed = KINDS[kind].check(value)
    assert state == VALID
    expected = KINDS[kind].loaded(parsed)
    got = getter(policy)
    assert same(got, expected), f"{path} = {value!r} loaded as {got!r}, expected {expected!r}"


@pytest.mark.parametrize("kind", TRICKY_KINDS)
@settings(max_examples=PER_KIND * 3, deadline=None, phases=PHASES)
@given(data=st.data())
def test_edge_values_are_judged_as_the_reference_does(kind: str, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(leaves_of(kind)), label="path")
    value = data.draw(KINDS[kind].tricky, label="value")
    doc = base()
    set_at(doc, path, value)
    reference = Reference(doc)
    assume(reference.verdict != UNSPECIFIED)
    text = dump(doc)
    note(text)
    try:
        policy = load(text).policy
    except PolicyError as error:
        assert_well_formed(error)
        assert reference.verdict == INVALID, f"{path} = {value!r}: the reference accepts it, " \
            f"the loader says {[str(p) for p in error.problems]}"
        return
    assert reference.verdict == VALID, f"{path} = {value!r}: loaded, but the reference says " \
        f"{reference.invalid}"
    check_loaded_value(policy, path, value)
