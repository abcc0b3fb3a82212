"""RFC 9457 problem+json answers: every error the API gives has this shape."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
          415: "Unsupported Media Type", 422: "Unprocessable Content",
          500: "Internal Server Error", 503: "Service Unavailable"}


class Problem(Exception):
    """Raised by handlers; the error middleware turns it into the response."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra
        self.headers = headers


class ValidationProblem(Problem):
    """422 naming each invalid field: `errors: [{"field", "message"}]`."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(422, "The request body has invalid fields: " + ", ".join(errors),
                         errors=[{"field": f, "message": m} for f, m in errors.items()])


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None,
                     **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status,
            "detail": detail, **extra}
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/problem+json", headers=headers)
