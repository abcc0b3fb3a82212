"""Call events through PostgreSQL LISTEN/NOTIFY, so every replica's subscribers see every write.

Writers call `notify()` inside their transaction (the event is delivered only if it commits);
each API process keeps one asyncpg connection LISTENing on the channel and fans the events out
to its WebSocket subscribers' queues. The listener reconnects when its connection is lost (for
instance when a restore swaps the database in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "call_events"
QUEUE_SIZE = 1000

log = logging.getLogger("upstream.events")


async def notify(session: AsyncSession, event: str, call: dict[str, Any]) -> None:
    payload = json.dumps({"event": event, "call": call})
    await session.execute(text("SELECT pg_notify(:channel, :payload)"),
                          {"channel": CHANNEL, "payload": payload})


class EventHub:
    """One LISTEN connection per process; `subscribe()` hands out a queue of event dicts."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscribers: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._listening = asyncio.Event()
        self._first_attempt = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once the first connection attempt succeeded or failed (a
        database that is down does not hold up the API's start: it keeps retrying)."""
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), 10)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        for queue in self._subscribers:
            if queue.full():  # a subscriber that does not read loses its oldest event
                queue.get_nowait()
            queue.put_nowait(event)

    async def _run(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._deliver)
                self._listening.set()
                self._first_attempt.set()
                while not lost.is_set():  # a lost socket is noticed by a periodic query
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event listener: %s; reconnecting", exc)
            finally:
                self._listening.clear()
                self._first_attempt.set()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=1))
            await asyncio.sleep(1)
