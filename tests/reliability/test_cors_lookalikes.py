"""CORS origin look-alikes, over raw sockets, with what the upstream received: the rows the
attack table (tests/test_attacks.py) lacks; gateway.cors's decisions are table-tested in
tests/test_cors_table.py, this is the gateway process answering them.

The policy allows `https://app.example.com` and `https://*.example.com`, with credentials.
For each origin that only looks allowed:
- a preflight is refused by the gateway (`403` problem+json, `Vary: Origin`, no
  `Access-Control-*`), and the upstream receives nothing;
- an actual request is forwarded (CORS is the browser's to enforce), the upstream receives it
  once, and the answer carries no `Access-Control-Allow-Origin`/`-Credentials`.
The allowed origins get the opposite, as controls.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.client import exchange
from tests.support.recorder import Site, gateway_before_recorder

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("reliability-cors")]

CORS = """\
cors:
  default:
    allow_origins: [https://app.example.com, "https://*.example.com"]
    allow_methods: [GET, POST]
    allow_headers: [Content-Type]
    allow_credentials: true
"""

LOOKALIKES = [
    "https://app.example.com.evil.com",  # suffix appended
    "https://evilexample.com",  # no dot before the allowed suffix
    "https://app-example.com",
    "https://example.com.evil.com",
    "https://app.example.co",
    "https://app.example.comm",
    "http://app.example.com",  # scheme downgrade
    "https://app.example.com:8443",  # another port
    "https://APP.EXAMPLE.COM.evil.com",
    "https://app.ex\u0430mple.com",  # Cyrillic a (raw UTF-8 bytes on the wire)
    "https://xn--app-example-xyz.com",
    "https://app.example.com%2eevil.com",
    "https://app.example.com@evil.com",  # userinfo
    "https://evil.com#.example.com",
    "https://evil.com/.example.com",
    "https://evil.com?.example.com",
    "https://app.example.com.",  # trailing dot
    "https://.example.com",  # empty label
    "https://app..example.com",
    "null",
    "https://app.example.com https://evil.com",  # a list in one field
    "*",
    "https://evil.com\t",
    "https://example.com",  # the bare suffix: not *.example.com
]
ALLOWED = ["https://app.example.com", "https://api.example.com"]



@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    with gateway_before_recorder(tmp_path_factory.mktemp("cors"),
                                 top_extra=CORS) as started:
        yield started


def preflight(origin: str) -> bytes:
    return (b"OPTIONS /api/x HTTP/1.1\r\nHost: gw.test\r\nOrigin: " + origin.encode()
            + b"\r\nAccess-Control-Request-Method: POST\r\n\r\n")


def actual(origin: str) -> bytes:
    return b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\nOrigin: " + origin.encode() + b"\r\n\r\n"


def cors_headers(resp) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers if k.lower().startswith("access-control-")}


@pytest.mark.parametrize("origin", LOOKALIKES)
def test_a_lookalike_origins_preflight_is_refused_and_never_forwarded(site: Site,
                                                                     origin: str) -> None:
    mark = site.rec.mark()
    resp = exchange(site.gw.port, preflight(origin))
    assert resp.is_problem(403), resp.raw[:300]
    assert cors_headers(resp) == {}
    assert "origin" in (resp.header("Vary") or "").lower()
    site.rec.sync(site.gw.port)
    assert site.rec.since(mark) == []


@pytest.mark.parametrize("origin", LOOKALIKES)
def test_a_lookalike_origins_request_is_forwarded_without_cors_grants(site: Site,
                                                                      origin: str) -> None:
    mark = site.rec.mark()
    resp = exchange(site.gw.port, actual(origin))
    assert resp.status == 200 and resp.json()["target"] == "/api/x"
    assert "access-control-allow-origin" not in cors_headers(resp)
    assert "access-control-allow-credentials" not in cors_headers(resp)
    site.rec.sync(site.gw.port)
    assert [e["target"] for e in site.rec.since(mark)] == ["/api/x"]


@pytest.mark.parametrize("origin", ALLOWED)
def test_an_allowed_origin_is_granted_exactly(site: Site, origin: str) -> None:
    mark = site.rec.mark()
    pre = exchange(site.gw.port, preflight(origin))
    assert pre.status == 204
    assert cors_headers(pre)["access-control-allow-origin"] == origin
    got = exchange(site.gw.port, actual(origin))
    assert got.status == 200
    assert cors_headers(got)["access-control-allow-origin"] == origin
    assert cors_headers(got)["access-control-allow-credentials"] == "true"
    site.rec.sync(site.gw.port)
    assert [e["method"] for e in site.rec.since(mark)] == ["GET"]
