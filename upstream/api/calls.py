"""/api/calls: list with keyset pagination and filters, status changes; /api/calls/events: the
live event stream (WebSocket, fed by PostgreSQL LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from aiohttp import WSMsgType, web
from sqlalchemy import select

from upstream.api.campaigns import PAGE_DEFAULT, PAGE_MAX, call_json
from upstream.api.keys import HUB, SESSIONS
from upstream.api.pages import keyset_page
from upstream.api.validation import check_fields, choice, json_object, path_id, query_int
from upstream.events import notify
from upstream.models import CALL_STATUSES, Call
from upstream.problems import Problem, ValidationProblem

TERMINAL = {"completed", "failed", "no_answer", "cancelled"}
TRANSITIONS = {
    "queued": {"ringing", "failed", "cancelled"},
    "ringing": {"in_progress", "no_answer", "failed", "cancelled"},
    "in_progress": {"completed", "failed"},
}


async def list_calls(request: web.Request) -> web.Response:
    errors: dict[str, str] = {}
    limit = query_int(request, "limit", errors, default=PAGE_DEFAULT, maximum=PAGE_MAX)
    after = query_int(request, "cursor", errors, default=0, minimum=0)
    campaign_id = query_int(request, "campaign_id", errors, default=None)
    status = request.query.get("status")
    if status is not None and status not in CALL_STATUSES:
        errors["status"] = "must be one of " + ", ".join(CALL_STATUSES)
    if errors:
        raise ValidationProblem(errors)
    query = select(Call).where(Call.id > after).order_by(Call.id).limit(limit + 1)
    if campaign_id is not None:
        query = query.where(Call.campaign_id == campaign_id)
    if status:
        query = query.where(Call.status == status)
    return await keyset_page(request, query, limit, call_json)


async def update_call(request: web.Request) -> web.Response:
    call_id = path_id(request)
    body = await json_object(request)
    errors: dict[str, str] = {}
    check_fields(body, {"status", "duration_s"}, errors)
    status = choice(body, "status", CALL_STATUSES, errors, required=True)
    duration = body.get("duration_s")
    if "duration_s" in body and (not isinstance(duration, int) or isinstance(duration, bool)
                                 or not 0 <= duration <= 86400):
        errors["duration_s"] = "must be an integer from 0 to 86400"
    if errors:
        raise ValidationProblem(errors)
    async with request.app[SESSIONS]() as session:
        call = (await session.execute(select(Call).where(Call.id == call_id).with_for_update())
                ).scalar_one_or_none()
        if call is None:
            raise Problem(404, f"No call {call_id}.")
        if status not in TRANSITIONS.get(call.status, set()):
            raise Problem(409, f"A call cannot go from {call.status} to {status}.")
        now = datetime.now(UTC)
        call.status = status
        if status == "in_progress":
            call.started_at = now
        if status in TERMINAL:
            call.ended_at = now
            if duration is not None:
                call.duration_s = duration
            elif call.started_at is not None:
                call.duration_s = int((now - call.started_at).total_seconds())
        await session.flush()
        await notify(session, "call.updated", call_json(call))
        await session.commit()
        return web.json_response(call_json(call))


async def call_events(request: web.Request) -> web.WebSocketResponse:
    offered = [p.strip() for entry in request.headers.getall("Sec-WebSocket-Protocol", [])
               for p in entry.split(",") if p.strip()]
    # A browser fails the handshake unless one offered protocol is selected: prefer `events`.
    protocols = ("events",) if "events" in offered else tuple(
        p for p in offered if p.startswith("bearer."))[:1]
    ws = web.WebSocketResponse(protocols=protocols, heartbeat=30)
    await ws.prepare(request)
    hub = request.app[HUB]
    queue = hub.subscribe()
    reader = asyncio.create_task(_drain(ws))
    try:
        while not ws.closed:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await ws.send_json(getter.result())
    finally:
        hub.unsubscribe(queue)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends until it closes."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
