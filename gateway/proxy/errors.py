"""Upstream failures mapped to the gateway's answers: never a 500 for upstream trouble.

The upstream client (upstream_client.py) raises UpstreamBroken carrying one of the failures
below; the WebSocket relay still uses aiohttp's client, whose exceptions `classify` maps to the
same failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    status: int  # 502 or 504
    kind: str  # connect | timeout | reset | protocol
    detail: str
    retryable: bool = False  # True only when nothing can have reached the upstream


CONNECT_FAILED = UpstreamFailure(502, "connect", "could not connect to the upstream", True)
CONNECT_TIMEOUT = UpstreamFailure(504, "timeout", "timed out connecting to the upstream", True)
READ_TIMEOUT = UpstreamFailure(504, "timeout", "the upstream did not answer in time")
CLOSED = UpstreamFailure(502, "reset", "the upstream closed the connection")
MALFORMED = UpstreamFailure(502, "protocol", "the upstream sent an invalid response")


class UpstreamBroken(Exception):
    """A failure of the upstream client, already mapped to its answer.

    `stale`: the connection was a reused keep-alive one and broke before any byte of a
    response, the race every keep-alive client has with an upstream closing an idle
    connection; the request may be sent once more on a fresh connection.
    """

    def __init__(self, failure: UpstreamFailure, *, stale: bool = False) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.stale = stale


def classify(exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, UpstreamBroken):
        return exc.failure
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return CONNECT_TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CONNECT_FAILED
    if isinstance(exc, TimeoutError):  # includes aiohttp.SocketTimeoutError
        return READ_TIMEOUT
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return CLOSED
    return MALFORMED
