"""Upstream exceptions map to 502/504, and only failures before sending are retryable."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.proxy.errors import (
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    MALFORMED,
    READ_TIMEOUT,
    UpstreamBroken,
    UpstreamFailure,
    classify,
)


def connector_error() -> aiohttp.ClientConnectorError:
    class Key:
        ssl = False
        host, port = "127.0.0.1", 1
    return aiohttp.ClientConnectorError(Key(), ConnectionRefusedError(111, "refused"))


@pytest.mark.parametrize(("exc", "status", "kind", "retryable"), [
    (connector_error(), 502, "connect", True),
    (aiohttp.ConnectionTimeoutError(), 504, "timeout", True),
    (aiohttp.SocketTimeoutError(), 504, "timeout", False),
    (TimeoutError(), 504, "timeout", False),
    (aiohttp.ServerDisconnectedError(), 502, "reset", False),
    (aiohttp.ClientOSError(104, "reset"), 502, "reset", False),
    (aiohttp.ClientResponseError(None, (), status=400, message="bad"), 502, "protocol", False),
    (aiohttp.ClientPayloadError("broken"), 502, "protocol", False),
])
def test_classification(exc, status: int, kind: str, retryable: bool) -> None:
    failure = classify(exc)
    assert (failure.status, failure.kind, failure.retryable) == (status, kind, retryable)


@pytest.mark.parametrize(("failure", "status", "kind", "retryable"), [
    (CONNECT_FAILED, 502, "connect", True),
    (CONNECT_TIMEOUT, 504, "timeout", True),
    (READ_TIMEOUT, 504, "timeout", False),
    (CLOSED, 502, "reset", False),
    (MALFORMED, 502, "protocol", False),
])
def test_the_upstream_clients_failures_map_as_aiohttps_did(
        failure: UpstreamFailure, status: int, kind: str, retryable: bool) -> None:
    mapped = classify(UpstreamBroken(failure))
    assert (mapped.status, mapped.kind, mapped.retryable) == (status, kind, retryable)
