"""The request-head deadline measures the client's silence, not the gateway's loop lag: a head
that arrived while the loop was busy is read and served even though the deadline passed
meanwhile (uvloop runs due timers before it polls the sockets)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvloop
from multidict import CIMultiDict

from gateway.http.protocol import Exchange, GatewayServer
from gateway.http.response import Answer

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

HEADER_TIMEOUT = 0.1
BUSY = 0.4  # one loop turn four deadlines long


async def ok(exchange: Exchange) -> None:
    exchange.send(Answer(200, body=b"ok"))


def client(port: int, send_after: float | None, answers: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if send_after is not None:
            time.sleep(send_after)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        answers.append(data)


class BusyReader(asyncio.Protocol):
    """Keeps the loop busy in its poll phase, as parsing hundreds of requests does: the
    sockets that become readable meanwhile are polled in the next turn, after its timers."""

    def data_received(self, data: bytes) -> None:
        time.sleep(BUSY)


async def serve_one(send_after: float | None, block_after_accept: bool) -> bytes:
    loop = asyncio.get_running_loop()
    server = GatewayServer(ok, header_timeout=HEADER_TIMEOUT, error_headers=CIMultiDict,
                           count_error=lambda status: None)
    ours, theirs = socket.socketpair()
    await loop.connect_accepted_socket(BusyReader, ours)

    def accept():  # 20 ms after the connection is accepted, the loop is busy for BUSY
        if block_after_accept:
            loop.call_later(0.02, theirs.send, b"x")
        return server()

    listener = await loop.create_server(accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    answers: list[bytes] = []
    thread = threading.Thread(target=client, args=(port, send_after, answers))
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    listener.close()
    theirs.close()
    await server.shutdown(1)
    return answers[0]


def run_on(loop_kind: str, send_after: float | None, block: bool) -> bytes:
    coro = asyncio.wait_for(serve_one(send_after, block), 20)
    return uvloop.run(coro) if loop_kind == "uvloop" else asyncio.run(coro)


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_head_sent_while_the_loop_was_busy_is_served(loop_kind: str) -> None:
    # sent 50 ms after connecting, within the deadline, but read only after the busy turn
    answer = run_on(loop_kind, send_after=0.05, block=True)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_silent_client_is_still_cut_after_a_busy_turn(loop_kind: str) -> None:
    started = time.monotonic()
    answer = run_on(loop_kind, send_after=None, block=True)
    assert answer == b""  # closed, nothing said: it never asked anything
    assert time.monotonic() - started < BUSY + 2.0
