"""What a deadline means on a busy event loop.

A timer that expires while the loop is busy runs before the loop next polls its sockets (libuv
runs due timers first; asyncio's selector loop runs the callbacks a poll made ready in the same
turn as the timers), so bytes that arrived during one long turn are not seen yet when the
timer fires. Deadlines about a peer's silence (Redis's reply, a client's request head) are
therefore confirmed after one more poll: the loop's lag is not the peer's silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def after_turns(loop: asyncio.AbstractEventLoop, turns: int, callback: Callable[[], None]
                ) -> None:
    """Run `callback` once the loop has polled its sockets `turns - 1` more times: a callback
    queued from a queued callback runs after the next poll (libuv runs due timers, then the
    callbacks queued before them, then polls; asyncio selects, then runs the callbacks queued
    before it). From a timer, 2 turns are one poll."""
    if turns <= 0:
        callback()
    else:
        loop.call_soon(after_turns, loop, turns - 1, callback)
