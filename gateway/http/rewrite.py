"""Path rewriting: the path a route sends upstream, from the normalized path the client sent.

Pure. Only whole segments move: `strip_prefix` drops the path's first segments (as many as the
prefix has; the route's match, checked at load, guarantees they are the prefix's, in the form
routes match: case, `;parameters` and trailing dots as `server.path_matching` says), then
`add_prefix` goes in front; `replace` puts a fixed path instead. The normalized path has no dot
segment and no encoded slash, and neither has any value of a rewrite (each is a normalized path
at load), so no rewrite can make one: segments are moved, never cut or joined.
"""

from __future__ import annotations

from gateway.settings.policy import PathRewrite


def segments(path: str) -> int:
    """How many segments a normalized path has (`/` has none)."""
    return 0 if path == "/" else path.count("/")


def rewrite_path(rewrite: PathRewrite, path: str) -> str:
    if rewrite.replace is not None:
        return rewrite.replace
    if rewrite.strip_prefix is not None:
        cut = segments(rewrite.strip_prefix)
        parts = path.split("/", cut + 1)  # "", the prefix's segments, the rest
        path = "/" + parts[cut + 1] if len(parts) > cut + 1 else "/"
    if rewrite.add_prefix is not None:
        path = rewrite.add_prefix + path
    return path
