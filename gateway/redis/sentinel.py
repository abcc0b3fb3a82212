"""Where the master is, by Redis Sentinel: asked on every new connection to Redis
(connection.py `locate`), so a failover is followed when the gateway reconnects.

Every Sentinel of the URL is asked at once (`SENTINEL MASTER <service>`) on a pipelined
connection of its own; the first to name a master that it does not flag as down wins. So a
Sentinel that is stalled or gone costs nothing while another answers. The URL's password (not
its user, which is the master's) is sent to the Sentinels too; one without a password accepts
the connection anyway.

Why not redis-py's Sentinel: it asks the Sentinels one after the other, and (given a Sentinel
password) without a socket timeout, so one stalled Sentinel held every reconnect; and it
raised its own exception types past the limiter's connection errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gateway.redis.connection import RedisConnection, RedisConnectionLost
from gateway.redis.endpoint import Endpoint
from gateway.redis.resp import encode


def master_address(reply: Any) -> tuple[str, int] | str:
    """(host, port) from a `SENTINEL MASTER` reply, or why it names none."""
    if not isinstance(reply, list) or len(reply) % 2:
        return f"unexpected answer {str(reply)[:120]!r}"  # an error: no such master name
    fields = {bytes(reply[i]).decode(errors="replace"): bytes(reply[i + 1]).decode(
        errors="replace") for i in range(0, len(reply), 2)}
    flags = set(fields.get("flags", "").split(","))
    if "master" not in flags or flags & {"s_down", "o_down", "disconnected"}:
        return f"master flagged {fields.get('flags')!r}"
    try:
        return fields["ip"], int(fields["port"])
    except (KeyError, ValueError):
        return "no address in the answer"


class SentinelLocator:
    """The `locate` of a redis+sentinel:// URL; see the module docstring."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.service = endpoint.service
        self.question = encode("SENTINEL", "MASTER", endpoint.service)
        self.sentinels = [
            # the password only, as redis-py sent it: a URL's ACL user is the master's
            RedisConnection(dataclasses.replace(endpoint, kind="standalone", hosts=(host,),
                                                db=0, service="", username=None),
                            timeout, auth_optional=True)
            for host in endpoint.hosts]

    async def __call__(self) -> tuple[str, int]:
        asks = [asyncio.ensure_future(s.call(self.question)) for s in self.sentinels]
        why: list[str] = []
        try:
            for answered in asyncio.as_completed(asks):
                try:
                    found = master_address(await answered)
                except (OSError, TimeoutError) as exc:  # RedisConnectionLost is an OSError
                    why.append(repr(exc))
                    continue
                if isinstance(found, tuple):
                    return found
                why.append(found)
        finally:
            for ask in asks:
                if not ask.done():
                    ask.cancel()
        raise RedisConnectionLost(f"no Sentinel names a master for {self.service!r}: "
                                  + "; ".join(why))

    async def close(self) -> None:
        for sentinel in self.sentinels:
            await sentinel.close()
