"""Request body and query validation: 400 for malformed JSON, 422 naming each invalid field."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from upstream.problems import Problem, ValidationProblem

PHONE = re.compile(r"^\+?[0-9]{6,15}$")
MAX_ID = 2**63 - 1


async def json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValidationProblem({"body": "must be a JSON object"})
    return body


def check_fields(body: Mapping[str, Any], allowed: set[str], errors: dict[str, str]) -> None:
    for key in body:
        if key not in allowed:
            errors[key] = "unknown field"


def string(body: Mapping[str, Any], key: str, errors: dict[str, str], *, required: bool,
           min_len: int = 1, max_len: int = 200, strip: bool = True) -> str | None:
    """A string field, surrounding whitespace removed unless `strip` is False (passwords)."""
    if key not in body:
        if required:
            errors[key] = "is required"
        return None
    value = body[key]
    if not isinstance(value, str):
        errors[key] = "must be a string"
        return None
    if strip:
        value = value.strip()
    if not min_len <= len(value) <= max_len:
        errors[key] = f"must be {min_len} to {max_len} characters"
        return None
    return value


def choice(body: Mapping[str, Any], key: str, options: tuple[str, ...],
           errors: dict[str, str], *, required: bool = False) -> str | None:
    if key not in body:
        if required:
            errors[key] = "is required"
        return None
    value = body[key]
    if value not in options:
        errors[key] = "must be one of " + ", ".join(options)
        return None
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    value = int(request.match_info[name])  # the route's pattern admits digits only
    if value > MAX_ID:
        raise Problem(404, "No such resource.")
    return value


def query_int(request: web.Request, key: str, errors: dict[str, str], *, default: int | None,
              minimum: int = 1, maximum: int = MAX_ID) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        errors[key] = f"must be an integer from {minimum} to {maximum}"
        return None
    return int(raw)
