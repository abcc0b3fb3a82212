"""The gateway's own responses: RFC 9457 problem+json bodies with a fixed shape."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from multidict import CIMultiDict

from gateway.http.response import Answer, connection_line, date_line, encode_head

CONTENT_TYPE = "application/problem+json"


def problem_body(status: int, detail: str, **extra: Any) -> bytes:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    request_id: str | None = None,
    headers: CIMultiDict[str] | None = None,
    close: bool = False,
    **extra: Any,
) -> Answer:
    """A problem+json answer; `close` also ends the connection (for unreadable requests)."""
    out = CIMultiDict(headers or ())
    if request_id is not None:
        out["X-Request-ID"] = request_id
    out["Content-Type"] = CONTENT_TYPE
    return Answer(status, out.items(), problem_body(status, detail, **extra), close)


def problem_bytes(status: int, detail: str, headers: CIMultiDict[str], request_id: str) -> bytes:
    """A whole HTTP/1.1 problem+json answer as bytes, for where no request was read or could
    be (a connection refused for overload, a head the parser refused); it ends the
    connection."""
    body = problem_body(status, detail)
    fields = [("Content-Type", CONTENT_TYPE), ("X-Request-ID", request_id), *headers.items()]
    extra = connection_line(False, (1, 1)) + f"Content-Length: {len(body)}\r\n"
    return encode_head(status, None, fields, extra) + body


class PrebuiltProblem:
    """A problem+json answer that ends its connection, encoded once for a set of headers:
    only its `X-Request-ID` and `Date` are filled in per answer. For answers the connection
    layer writes in bulk (the `408` of a body that stopped arriving): a crowd of slow clients
    cut together costs a few concatenations each, not a head and a JSON body each."""

    __slots__ = ("_body", "_head", "headers", "status")

    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...]) -> None:
        self.status = status
        self.headers = headers  # what it was built for (the caller compares, to rebuild)
        self._body = problem_body(status, detail)
        fields = [("Content-Type", CONTENT_TYPE), *headers]
        extra = connection_line(False, (1, 1)) + f"Content-Length: {len(self._body)}\r\n"
        head = encode_head(status, None, fields, extra, date=False)
        self._head = head[:-2]  # less the blank line: X-Request-ID and Date follow

    @property
    def body_size(self) -> int:
        return len(self._body)

    def encode(self, request_id: str, head_only: bool = False) -> bytes:
        """The whole answer (its head alone for a HEAD request); `request_id` is one the
        gateway chose or checked (no CR or LF)."""
        return b"".join((self._head, b"X-Request-ID: ", request_id.encode("ascii"), b"\r\n",
                         date_line().encode("ascii"), b"\r\n",
                         b"" if head_only else self._body))
