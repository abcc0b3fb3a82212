"""Bodies stream through the gateway: 100 MiB each way without the gateway's memory following.

Requirement: a 100 MiB upload and a 100 MiB download pass through with the gateway's peak RSS
(VmHWM) growing by less than 50 MiB. The test client streams too (http.client, fixed-size
reads and a generated request body), so nothing here holds 100 MiB at once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.processes import Gateway, Upstream, peak_rss_kib
from tests.support.upstream import GZIP_BODY, PATTERN

MIB = 1024 * 1024
SIZE = 100 * MIB
MAX_GROWTH_KIB = 50 * 1024
READ_CHUNK = 64 * 1024
TIMEOUT = 60.0  # per socket operation; a whole transfer takes a second or two locally


@pytest.fixture
def gateway(gateway_factory, upstream: Upstream) -> Gateway:
    # 100 MiB bodies need a limit above the 10 MiB default.
    return gateway_factory(upstream.url, server_extra="limits: {max_body_size: 200MiB}")


def pattern_chunks(size: int) -> Iterator[bytes]:
    """`size` bytes of the upstream's repeating pattern, one PATTERN-sized piece at a time."""
    sent = 0
    while sent < size:
        piece = PATTERN[: min(len(PATTERN), size - sent)]
        yield piece
        sent += len(piece)


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(size):
        digest.update(piece)
    return digest.hexdigest()


def connect(gw: Gateway) -> http.client.HTTPConnection:
    parts = urlsplit(gw.url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)


def download(gw: Gateway, size: int) -> tuple[int, str, str | None]:
    """GET /download/<size>; (bytes read, sha256, Content-Length header), read in chunks."""
    conn = connect(gw)
    try:
        conn.request("GET", f"/download/{size}")
        resp = conn.getresponse()
        assert resp.status == 200, resp.read(4096)
        digest = hashlib.sha256()
        received = 0
        while chunk := resp.read(READ_CHUNK):
            digest.update(chunk)
            received += len(chunk)
        return received, digest.hexdigest(), resp.getheader("Content-Length")
    finally:
        conn.close()


def upload(gw: Gateway, size: int, *, chunked: bool) -> dict:
    """POST `size` pattern bytes to the echo upstream; its JSON report of what it received."""
    conn = connect(gw)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if not chunked:
            headers["Content-Length"] = str(size)
        # An iterable body is sent piece by piece; without Content-Length http.client frames
        # it with Transfer-Encoding: chunked.
        conn.request("POST", "/upload-check", body=pattern_chunks(size), headers=headers,
                     encode_chunked=chunked)
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status == 200, payload[:4096]
        return json.loads(payload)
    finally:
        conn.close()


def received_framing(report: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in report["headers"]}


def warm_up(gw: Gateway) -> None:
    """Exercise every path the big transfers take, so the baseline includes their setup."""
    for _ in range(3):
        received, digest, _ = download(gw, 256 * 1024)
        assert (received, digest) == (256 * 1024, pattern_sha256(256 * 1024))
        assert upload(gw, 256 * 1024, chunked=False)["body_length"] == 256 * 1024
        assert upload(gw, 256 * 1024, chunked=True)["body_length"] == 256 * 1024


@pytest.mark.slow
@pytest.mark.heavy  # 200 MiB through the gateway as fast as it goes
def test_100mib_each_way_with_bounded_peak_rss(gateway: Gateway) -> None:
    pid = gateway.proc.pid  # workers == 1: this is the serving process itself
    warm_up(gateway)
    baseline = peak_rss_kib(pid)
    expected = pattern_sha256(SIZE)
    peaks: dict[str, int] = {}

    received, digest, length = download(gateway, SIZE)
    assert length == str(SIZE)
    assert received == SIZE
    assert digest == expected
    peaks["download"] = peak_rss_kib(pid)

    report = upload(gateway, SIZE, chunked=False)
    assert report["body_length"] == SIZE
    assert report["body_sha256"] == expected
    assert received_framing(report).get("content-length") == str(SIZE)
    peaks["upload (Content-Length)"] = peak_rss_kib(pid)

    report = upload(gateway, SIZE, chunked=True)
    assert report["body_length"] == SIZE
    assert report["body_sha256"] == expected
    framing = received_framing(report)
    assert framing.get("transfer-encoding") == "chunked"
    assert "content-length" not in framing
    peaks["upload (chunked)"] = peak_rss_kib(pid)

    growth = peak_rss_kib(pid) - baseline
    figures = ", ".join(f"after {k}: {v} KiB" for k, v in peaks.items())
    print(f"\ngateway VmHWM baseline {baseline} KiB; {figures}; growth {growth} KiB")
    assert growth < MAX_GROWTH_KIB, (
        f"gateway peak RSS grew by {growth / 1024:.1f} MiB (limit 50 MiB): "
        f"baseline {baseline} KiB; {figures}"
    )


def test_gzip_body_passes_through_byte_exact(gateway: Gateway) -> None:
    conn = connect(gateway)
    try:
        conn.request("GET", "/gzip", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()  # http.client never decompresses
        assert resp.status == 200
        assert resp.getheader("Content-Encoding") == "gzip"
        assert resp.getheader("Content-Length") == str(len(GZIP_BODY))
        assert body == GZIP_BODY
    finally:
        conn.close()
