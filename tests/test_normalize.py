"""Path normalization: the one documented form that routing and the upstream both see."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.normalize import PathRejected, normalize_path, normalize_target


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/", "/", None),
    ("/api/users", "/api/users", None),
    ("/api/users/", "/api/users/", None),
    ("/a//b///c", "/a/b/c", None),
    ("/a/./b/.", "/a/b/", None),
    ("/a/b/../c", "/a/c", None),
    ("/a/b/..", "/a/", None),
    ("/../../etc/passwd", "/etc/passwd", None),
    ("/%2e%2e/admin", "/admin", None),
    ("/public/%2E%2E/admin", "/admin", None),
    ("/%41%62%7e", "/Ab~", None),
    ("/a%20b", "/a%20b", None),
    ("/caf%c3%a9", "/caf%C3%A9", None),
    ("/.well-known/x", "/.well-known/x", None),
    ("/search?q=a%2Fb&x=..", "/search", "q=a%2Fb&x=.."),
    ("/x?", "/x", ""),
])
def test_normalizes_to_the_documented_form(target: str, path: str, query: str | None) -> None:
    assert normalize_target(target) == (path, query)


@pytest.mark.parametrize("target", [
    "http://evil.example/x",  # absolute-form
    "evil.example:443",  # authority-form
    "*",  # asterisk-form
    "/a%2Fb", "/a%2fb",  # encoded slash
    "/a%5Cb", "/a\\b",  # backslash, encoded or raw
    "/a%00b", "/a%0d%0a", "/a%7f",  # encoded controls
    "/%252e%252e/admin",  # double encoding
    "/a/..;/admin", "/a/.;x/b",  # servlet path-parameter dot segments
    "/a%zz", "/a%4", "/a%",  # malformed escapes
    "/a b", "/a\tb", "/a\"b", "/a<b", "/a|b", "/caf\u00e9",  # raw characters needing escapes
    "/a#frag",
    "/x?a=\x01", "/x?a b", "/x?a#b",  # bad query characters
    "/x?a=\x7f", "/x?a=\u00e9", "/x?a=\u20ac", "/x?a=\U0001f600",  # DEL, raw non-ASCII
])
def test_rejects_ambiguous_or_malformed_targets(target: str) -> None:
    with pytest.raises(PathRejected):
        normalize_target(target)


_segment = st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e", "%41", "%20", "x.y", "~"])


@given(st.lists(_segment, max_size=12), st.booleans())
def test_normalization_is_idempotent_and_leaves_no_dot_or_empty_segments(
    segments: list[str], trailing: bool
) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    once = normalize_path(path)
    assert normalize_path(once) == once
    assert once.startswith("/")
    inner = once.strip("/").split("/")
    assert "//" not in once
    assert "." not in inner and ".." not in inner
