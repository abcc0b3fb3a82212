"""How the application behind the gateway matches paths, so that routes match the same way.

A route-scoped limit only holds if every spelling the upstream treats as one endpoint meets
the same route. Frameworks differ: many route case-insensitively, redirect or accept a
trailing slash, cut `;jsessionid=...` path parameters (servlet containers), or drop trailing
dots and spaces from a segment (IIS, Windows file systems). `server.path_matching` says which
of these the upstream does; the gateway then matches routes on the path seen the same way
(`match_key`), while the upstream still receives the normalized path unchanged.

Ambiguous spellings are refused by default: a `;` in a path and a segment ending in `.` or an
encoded space answer 400 unless the policy says how the upstream reads them (`strip`: as if
absent; `literal`: as ordinary characters).
"""

from __future__ import annotations

import re

from gateway.http.normalize import PathRejected
from gateway.settings.path_matching import PathMatching

_PARAMETERS = re.compile(r";[^/]*")
_TRAILING_DOTS = re.compile(r"(?:\.|%20)+(?=/|$)")




def match_key(path: str, matching: PathMatching) -> str:
    """The normalized `path` as routes see it; PathRejected for a refused spelling."""
    if ";" in path:
        if matching.path_parameters == "refuse":
            raise PathRejected("path parameters (';') are ambiguous: servlet containers "
                               "ignore them when routing (see server.path_matching)")
        if matching.path_parameters == "strip":
            path = _PARAMETERS.sub("", path)
    if path.endswith((".", "%20")) or "./" in path or "%20/" in path:
        # after normalization a '.' before '/' is only ever a segment's last character
        if matching.trailing_dots == "refuse":
            raise PathRejected("a path segment ending in '.' or a space is ambiguous: some "
                               "servers drop it (see server.path_matching)")
        if matching.trailing_dots == "strip":
            path = _TRAILING_DOTS.sub("", path)
    if not matching.case_sensitive:
        path = path.lower()
    return path


def route_pattern(pattern: str, matching: PathMatching) -> str:
    """A route's path or prefix in the same form as `match_key` gives request paths."""
    return pattern if matching.case_sensitive else pattern.lower()


def slash_twin(path: str) -> str | None:
    """The other spelling of an exact path under `trailing_slash: ignore` (None for `/`)."""
    if path == "/":
        return None
    return path[:-1] if path.endswith("/") else path + "/"
