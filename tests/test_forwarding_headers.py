"""Header rewriting: hop-by-hop removal, X-Forwarded-*, Via, X-Request-ID."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.forwarding import (
    choose_request_id,
    downstream_response_headers,
    upstream_request_headers,
)


def h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def upstream(incoming, *, trusted=False, authority="backend:8000"):
    return upstream_request_headers(
        incoming, version=(1, 1), peer="203.0.113.9", peer_trusted=trusted,
        client_ip="198.51.100.1", scheme="http", request_id="rid-1",
        upstream_authority=authority)


def test_hop_by_hop_and_connection_listed_headers_are_removed() -> None:
    out = upstream(h(("Host", "a"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"),
                     ("Keep-Alive", "5"), ("TE", "trailers"), ("Upgrade", "h2c"),
                     ("Proxy-Authorization", "Basic x"), ("Transfer-Encoding", "chunked"),
                     ("Proxy-Connection", "keep-alive"), ("X-Kept", "yes")))
    for name in ("Connection", "X-Secret", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization",
                 "Transfer-Encoding", "Proxy-Connection"):
        assert name not in out
    assert out["X-Kept"] == "yes"


def test_untrusted_peer_forwarding_headers_are_replaced() -> None:
    out = upstream(h(("Host", "public.example"), ("X-Forwarded-For", "1.1.1.1"),
                     ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"),
                     ("X-Real-IP", "1.1.1.1"), ("Forwarded", "for=1.1.1.1")))
    assert out.getall("X-Forwarded-For") == ["203.0.113.9"]
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "public.example"
    assert out["X-Real-IP"] == "198.51.100.1"
    assert "Forwarded" not in out


def test_trusted_peer_forwarding_headers_are_extended() -> None:
    out = upstream(h(("Host", "lb.internal"), ("X-Forwarded-For", "1.1.1.1"),
                     ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "shop.example")),
                   trusted=True)
    assert out["X-Forwarded-For"] == "1.1.1.1, 203.0.113.9"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "shop.example"


def test_host_is_the_upstreams_unless_preserved() -> None:
    assert upstream(h(("Host", "public.example")))["Host"] == "backend:8000"
    assert upstream(h(("Host", "public.example")), authority=None)["Host"] == "public.example"


def test_via_is_appended_in_both_directions() -> None:
    assert upstream(h(("Via", "1.0 edge")))["Via"] == "1.0 edge, 1.1 gateway"
    out = downstream_response_headers(h(("Server", "x")), version=(1, 1), request_id="r")
    assert out["Via"] == "1.1 gateway"


def test_expect_is_not_forwarded() -> None:
    assert "Expect" not in upstream(h(("Expect", "100-continue")))


def test_response_hop_by_hop_headers_are_removed_and_request_id_returned() -> None:
    out = downstream_response_headers(
        h(("Connection", "X-Upstream-Secret"), ("X-Upstream-Secret", "s"),
          ("Proxy-Authenticate", "Basic"), ("Content-Length", "3"), ("Trailer", "X")),
        version=(1, 1), request_id="rid-9")
    assert "X-Upstream-Secret" not in out and "Proxy-Authenticate" not in out
    assert "Trailer" not in out
    assert out["Content-Length"] == "3"
    assert out["X-Request-ID"] == "rid-9"


def test_request_id_from_trusted_peer_is_kept_when_well_formed() -> None:
    assert choose_request_id(h(("X-Request-ID", "abc-123")), peer_trusted=True) == "abc-123"


def test_request_id_from_untrusted_peer_is_replaced() -> None:
    new = choose_request_id(h(("X-Request-ID", "abc-123")), peer_trusted=False)
    assert new != "abc-123" and len(new) == 36


def test_malformed_request_id_is_replaced_even_from_trusted_peer() -> None:
    assert choose_request_id(h(("X-Request-ID", "a b\x7f")), peer_trusted=True) != "a b\x7f"


def test_new_request_ids_are_distinct_version_4_uuids() -> None:
    import uuid

    from gateway.http.forwarding import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
