"""Upstream exceptions map to 502/504, and only failures before sending are retryable."""

from __future__ import annotations

import pytest

from gateway.proxy.errors import (
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    MALFORMED,
    READ_TIMEOUT,
    UpstreamBroken,
    UpstreamFailure,
)


@pytest.mark.parametrize(("failure", "status", "kind", "retryable"), [
    (CONNECT_FAILED, 502, "connect", True),
    (CONNECT_TIMEOUT, 504, "timeout", True),
    (READ_TIMEOUT, 504, "timeout", False),
    (CLOSED, 502, "reset", False),
    (MALFORMED, 502, "protocol", False),
])
def test_the_upstream_clients_failures_map_to_502_and_504(
        failure: UpstreamFailure, status: int, kind: str, retryable: bool) -> None:
    mapped = UpstreamBroken(failure).failure
    assert (mapped.status, mapped.kind, mapped.retryable) == (status, kind, retryable)
