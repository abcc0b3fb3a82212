"""The gateway's own responses: RFC 9457 problem+json bodies with a fixed shape."""

from __future__ import annotations

import json
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
