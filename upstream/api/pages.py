"""Keyset pagination: the list endpoints' `{"items": [...], "next_cursor": ...}` shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy import Select

from upstream.api.keys import SESSIONS


async def keyset_page(request: web.Request, query: Select[Any], limit: int,
                      render: Callable[[Any], dict[str, Any]]) -> web.Response:
    """One page of a query ordered by id and limited to `limit + 1` rows: the extra row only
    says whether there is a next page."""
    async with request.app[SESSIONS]() as session:
        rows = list((await session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return web.json_response({"items": [render(row) for row in rows],
                              "next_cursor": str(rows[-1].id) if more else None})
