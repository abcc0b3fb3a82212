"""Upstream failures mapped to the gateway's answers: never a 500 for upstream trouble."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    status: int  # 502 or 504
    kind: str  # connect | timeout | reset | protocol
    detail: str
    retryable: bool = False  # True only when nothing can have reached the upstream


def classify(exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(504, "timeout", "timed out connecting to the upstream", True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure(502, "connect", "could not connect to the upstream", True)
    if isinstance(exc, TimeoutError):  # includes aiohttp.SocketTimeoutError
        return UpstreamFailure(504, "timeout", "the upstream did not answer in time")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return UpstreamFailure(502, "reset", "the upstream closed the connection")
    return UpstreamFailure(502, "protocol", "the upstream sent an invalid response")
