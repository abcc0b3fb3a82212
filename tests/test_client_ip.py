"""Client IP: forwarding headers are believed only from trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.http.client_ip import TrustedProxies, client_ip, parse_ip

TRUSTED = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"),
                          ipaddress.ip_network("fd00::/8")])
NONE = TrustedProxies([])


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_ip("203.0.113.9", ["1.2.3.4"], TRUSTED) == "203.0.113.9"


def test_no_trusted_proxies_configured_ignores_forwarded_for() -> None:
    assert client_ip("10.0.0.1", ["1.2.3.4"], NONE) == "10.0.0.1"


def test_trusted_peer_yields_the_nearest_untrusted_hop() -> None:
    assert client_ip("10.0.0.1", ["6.6.6.6, 1.2.3.4"], TRUSTED) == "1.2.3.4"


def test_trusted_hops_are_skipped_right_to_left() -> None:
    assert client_ip("10.0.0.1", ["6.6.6.6, 1.2.3.4, 10.1.1.1", "10.2.2.2"], TRUSTED) == "1.2.3.4"


def test_all_hops_trusted_yields_the_leftmost() -> None:
    assert client_ip("10.0.0.1", ["10.9.9.9, 10.8.8.8"], TRUSTED) == "10.9.9.9"


def test_garbage_hop_stops_the_walk_at_the_last_genuine_address() -> None:
    assert client_ip("10.0.0.1", ["1.2.3.4, not-an-ip, 10.3.3.3"], TRUSTED) == "10.3.3.3"


def test_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_ip("10.0.0.1", [], TRUSTED) == "10.0.0.1"


@pytest.mark.parametrize(("text", "expected"), [
    ("1.2.3.4", "1.2.3.4"),
    ("1.2.3.4:5678", "1.2.3.4"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("::ffff:10.0.0.1", "10.0.0.1"),
    (" 1.2.3.4 ", "1.2.3.4"),
])
def test_parses_hop_forms(text: str, expected: str) -> None:
    assert str(parse_ip(text)) == expected


def test_ipv4_mapped_peer_is_matched_against_ipv4_networks() -> None:
    assert client_ip("::ffff:10.0.0.1", ["1.2.3.4"], TRUSTED) == "1.2.3.4"


def test_ipv6_trusted_proxy() -> None:
    assert client_ip("fd00::1", ["2001:db8::7"], TRUSTED) == "2001:db8::7"
