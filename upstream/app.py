"""The demo API's routes: login, campaigns, calls and a live call-event WebSocket (in memory)."""

from __future__ import annotations

import asyncio
import secrets

from aiohttp import web

CAMPAIGNS = [{"id": 1, "name": "Spring outreach", "status": "active"},
             {"id": 2, "name": "Renewals", "status": "paused"}]
CALLS = [{"id": 101, "campaign_id": 1, "status": "completed", "duration_s": 182},
         {"id": 102, "campaign_id": 1, "status": "in_progress", "duration_s": 35}]


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


async def login(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict) or not body.get("username") or not body.get("password"):
        return web.json_response({"error": "username and password required"}, status=400)
    return web.json_response({"token": secrets.token_urlsafe(24), "user": body["username"]})


async def campaigns(_: web.Request) -> web.Response:
    return web.json_response(CAMPAIGNS)


async def calls(_: web.Request) -> web.Response:
    return web.json_response(CALLS)


async def call_events(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    for call in CALLS:
        await ws.send_json({"event": "call.updated", "call": call})
        await asyncio.sleep(0.1)
    async for _ in ws:  # keep open until the client leaves
        pass
    return ws


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/api/auth/login", login)
    app.router.add_get("/api/campaigns", campaigns)
    app.router.add_get("/api/calls", calls)
    app.router.add_get("/api/calls/events", call_events)
    return app
