"""The gateway's own responses: RFC 9457 problem+json bodies with a fixed shape."""

from __future__ import annotations

import json
import uuid
from http import HTTPStatus
from typing import Any

from multidict import CIMultiDict

from gateway.http.response import GatewayResponse

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
) -> GatewayResponse:
    """A problem+json response; `close` also ends the connection (for unreadable requests)."""
    out = CIMultiDict(headers or ())
    if request_id is not None:
        out["X-Request-ID"] = request_id
    resp = GatewayResponse(status=status, body=problem_body(status, detail, **extra), headers=out,
                        content_type=CONTENT_TYPE)
    if close:
        resp.force_close()
    return resp


def problem_bytes(status: int, detail: str, headers: CIMultiDict[str]) -> bytes:
    """A whole HTTP/1.1 problem+json answer as bytes, for where no request was read (a
    connection refused for overload); it ends the connection."""
    body = problem_body(status, detail)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {len(body)}",
            "Connection: close", f"X-Request-ID: {uuid.uuid4()}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
