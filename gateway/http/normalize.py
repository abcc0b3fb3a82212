"""The one path normalization the gateway applies before routing and forwarding.

Routes match the normalized path, and exactly that path is what the upstream receives, so the
gateway and the upstream can never disagree about which resource was asked for. In order:

1. The target must be origin-form (`/...`): absolute-form, authority-form and `*` are refused.
2. Characters outside RFC 3986 `pchar` and `/` are refused (space, `\\`, `"`, `<`, `|`, controls,
   raw non-ASCII); a `#` is refused; a `%` must be followed by two hex digits.
3. Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes are
   kept, with upper-case hex.
4. Ambiguous escapes are refused: `%2F` (encoded `/`), `%5C` (encoded `\\`), encoded control
   characters (`%00`-`%1F`, `%7F`), double encoding (`%25` followed by two hex digits), and
   escapes that are not UTF-8 (`%C0%AE` is an overlong `.` to lenient decoders).
5. Repeated slashes are merged; `.` and `..` segments are resolved (never above the root).
   A segment of the form `..;x` or `.;x` (path-parameter dot segments that servlet containers
   resolve) is refused.
6. A trailing slash is kept. The query string is passed through unchanged after a check for
   control characters, spaces, raw non-ASCII and `#`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# pchar minus '%' plus '/': what may appear raw in a path
_PATH_RAW = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# no escapes, no dots after a slash, no double slash: nothing to do
_ALREADY_NORMAL = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_NON_ASCII_ESCAPE = re.compile(r"%[89A-F][0-9A-F]")  # after _decode_unreserved: upper case
# What a query may not contain besides raw non-ASCII: controls, space, '#', DEL
_QUERY_BAD_ASCII = re.compile(r"[\x00-\x20\x7f#]")


class PathRejected(ValueError):
    """The request target is malformed or ambiguous; the message says why (safe to show)."""


def normalize_target(target: str) -> tuple[str, str | None]:
    """Split a request target into (normalized path, raw query or None)."""
    if not target.startswith("/"):
        if target == "*":
            raise PathRejected("asterisk-form request target is not supported")
        raise PathRejected("request target must be a path; absolute-form and authority-form "
                           "are refused")
    path, sep, query = target.partition("?")
    if sep:
        if not query.isascii() or _QUERY_BAD_ASCII.search(query):
            raise PathRejected("query contains a control character, space, '#' or raw non-ASCII")
    else:
        query = None
    if _ALREADY_NORMAL.fullmatch(path):
        return path, query
    return normalize_path(path), query


def normalize_path(path: str) -> str:
    """Normalize an origin-form path (no query); raise PathRejected when it is ambiguous."""
    if not _PATH_RAW.fullmatch(path):
        if "\\" in path:
            raise PathRejected("backslash in path")
        if "#" in path:
            raise PathRejected("fragment in request target")
        raise PathRejected("path contains a character that must be percent-encoded")
    if "%" in path:
        path = _decode_unreserved(path)
        if _NON_ASCII_ESCAPE.search(path):
            try:
                unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                raise PathRejected("percent-encoded bytes in path are not UTF-8") from None
    trailing = path.endswith("/")
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        if segment.startswith((".;", "..;")):
            raise PathRejected("dot segment with path parameters is ambiguous")
        out.append(segment)
    last = path.rsplit("/", 1)[-1]
    if last in (".", ".."):
        trailing = True
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result


def _decode_unreserved(path: str) -> str:
    parts = path.split("%")
    pieces = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise PathRejected("malformed percent-encoding in path")
        code = int(part[:2], 16)
        if code == 0x2F:
            raise PathRejected("encoded slash (%2F) in path")
        if code == 0x5C:
            raise PathRejected("encoded backslash (%5C) in path")
        if code < 0x20 or code == 0x7F:
            raise PathRejected("encoded control character in path")
        if code == 0x25 and len(part) >= 4 and part[2] in _HEX and part[3] in _HEX:
            raise PathRejected("double percent-encoding in path")
        char = chr(code)
        if char in _UNRESERVED:
            pieces.append(char + part[2:])
        else:
            pieces.append("%" + part[:2].upper() + part[2:])
    return "".join(pieces)
