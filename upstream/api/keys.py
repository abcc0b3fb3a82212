"""Typed keys of what the application object holds."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from upstream.events import EventHub
from upstream.metrics import Metrics
from upstream.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DATABASE_URL = web.AppKey("database_url", str)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker)
HUB = web.AppKey("hub", EventHub)
METRICS = web.AppKey("metrics", Metrics)
HEAD = web.AppKey("head", str)
