"""The process's file descriptors: how many it may open, and a table sized for them at start.

Every client connection, pooled upstream connection and relayed WebSocket is a descriptor. The
kernel keeps a process's descriptors in a table that starts small (64 entries) and doubles
when it is full. In a process with more than one thread (the gateway has libuv's four worker
threads, started when its listeners' addresses are resolved) each doubling first waits for a
full RCU grace period (`expand_fdtable` in Linux's fs/file.c calls `synchronize_rcu` when the
table is shared), and that wait happens inside the `accept4` that needed the room, with the
event loop stopped: 4 to 18 ms per doubling, measured while 2,000 connections opened in one
second (docs/reliability.md). Sizing the table once, before serving, pays that wait once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource

from gateway.settings.policy import Policy

# listeners, the admin port's connections, Redis, log files, the resolver's sockets
SPARE_DESCRIPTORS = 256


def raise_open_file_limit() -> None:
    """Each connection is a file descriptor: use the hard limit the system allows (as nginx's
    worker_rlimit_nofile), since a soft limit of 1024 would refuse connections long before
    server.limits.max_connections does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def descriptors_needed(policy: Policy) -> int:
    """The descriptors one worker holds at its configured bounds: every client connection,
    every upstream's pool and WebSockets, and a few of its own."""
    upstreams = policy.upstreams.values() or (policy.upstream,)
    return (policy.server.limits.max_connections
            + sum(u.max_connections + u.max_websockets for u in upstreams)
            + SPARE_DESCRIPTORS)


def reserve_descriptor_table(count: int) -> None:
    """Grow the kernel's descriptor table to hold `count` descriptors (at most the open-file
    limit) now, by asking for a descriptor numbered just below that and closing it at once: the
    table never shrinks. Nothing that is open is touched (F_DUPFD takes the lowest free number
    from there). Best effort: a process that cannot is only slower to open its crowd."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(count, soft) - 1
    if top < 64:
        return
    with contextlib.suppress(OSError):
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.close(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top))
        finally:
            os.close(fd)
