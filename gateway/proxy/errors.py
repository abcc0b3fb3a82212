"""Upstream failures mapped to the gateway's answers: never a 500 for upstream trouble.

The upstream client (upstream_client.py) raises UpstreamBroken carrying one of the failures
below, which the handler answers as they say (502 or 504).
"""

from __future__ import annotations

from dataclasses import dataclass


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

